//! Decompression bombs: a small PNG whose colour-profile chunk inflates to hundreds of
//! megabytes must be taken (or refused) without inflating it, and a WebP whose frame is larger
//! than its canvas is refused before it is decoded. Alone in their test binary, so the
//! process's peak memory (`VmHWM`) is these tests'.

use afterview_intake::{Limits, intake};
use image::{Rgb, RgbImage};

/// Bits written least significant first, as deflate packs them.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, len: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += len;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }
    /// A Huffman code: sent most significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        let rev = code.reverse_bits() >> (32 - len);
        self.put(rev, len);
    }
    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A zlib stream of `copies * 258 + 1` zero bytes, ~1,000:1: one fixed-Huffman block of a
/// literal 0 and then `copies` matches of length 258 at distance 1.
fn zlib_zeros(copies: usize) -> (Vec<u8>, usize) {
    let mut b = Bits::default();
    b.put(1, 1); // final block
    b.put(1, 2); // fixed Huffman
    b.code(0x30, 8); // literal 0
    for _ in 0..copies {
        b.code(0b1100_0101, 8); // length symbol 285 (258)
        b.code(0, 5); // distance code 0 (1)
    }
    b.code(0, 7); // end of block
    let n = copies * 258 + 1;
    let mut z = vec![0x78, 0x01];
    z.extend(b.finish());
    // Adler-32 of n zeros: a stays 1, b adds 1 per byte.
    let adler = ((n % 65_521) as u32) << 16 | 1;
    z.extend_from_slice(&adler.to_be_bytes());
    (z, n)
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    let crc = crc32fast::hash(&c[4..]);
    c.extend_from_slice(&crc.to_be_bytes());
    c
}

/// Peak resident memory of this process, in KiB.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_colour_profile_that_inflates_to_400_mb_is_never_inflated() {
    let img = RgbImage::from_fn(64, 64, |x, y| Rgb([x as u8 * 4, y as u8 * 4, 128]));
    let mut png = vec![];
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let (zlib, inflated) = zlib_zeros(1_600_000);
    assert!(inflated > 400_000_000);
    let mut profile = b"bomb\0\0".to_vec();
    profile.extend_from_slice(&zlib);
    // After the signature (8) and IHDR (25): the profile comes before the pixels.
    let mut bomb = png[..33].to_vec();
    bomb.extend(chunk(b"iCCP", &profile));
    bomb.extend_from_slice(&png[33..]);
    assert!(bomb.len() < 3_000_000, "{} bytes", bomb.len());

    let before = peak_kib();
    let n = intake(&bomb, &Limits::default()).expect("the pixels are fine");
    let grew_mib = (peak_kib() - before) / 1024;
    assert_eq!((n.width, n.height), (64, 64));
    assert!(
        grew_mib < 64,
        "taking the photo raised the peak memory by {grew_mib} MiB"
    );
}

/// A lossless WebP image (`VP8L`) of `w`x`h` transparent black pixels in a dozen bytes: no
/// transforms, no colour cache, and five prefix codes of one symbol each, so every pixel takes
/// no bits at all.
fn vp8l_blank(w: u32, h: u32) -> Vec<u8> {
    let mut b = Bits::default();
    b.put(0x2f, 8);
    b.put(w - 1, 14);
    b.put(h - 1, 14);
    b.put(0, 4); // no alpha hint, version 0
    b.put(0, 3); // no transform, no colour cache, no meta prefix codes
    for _ in 0..5 {
        // A simple code of one 1-bit symbol: 0.
        b.put(0b0001, 4);
    }
    b.finish()
}

/// A RIFF WebP file of `chunks`, each padded to an even length.
fn webp(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut body = b"WEBP".to_vec();
    for (kind, data) in chunks {
        body.extend_from_slice(*kind);
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        if data.len() % 2 == 1 {
            body.push(0);
        }
    }
    let mut file = b"RIFF".to_vec();
    file.extend_from_slice(&(body.len() as u32).to_le_bytes());
    file.extend(body);
    file
}

/// An extended header (`VP8X`) with `flags` and a `w`x`h` canvas.
fn vp8x(flags: u8, w: u32, h: u32) -> Vec<u8> {
    let mut v = vec![flags, 0, 0, 0];
    v.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
    v.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
    v
}

#[test]
fn a_webp_frame_larger_than_its_canvas_is_refused_before_decoding() {
    // The generator makes images the decoder takes: a plain one decodes.
    let plain = webp(&[(b"VP8L", vp8l_blank(40, 30))]);
    let n = intake(&plain, &Limits::default()).expect("a blank 40x30 WebP");
    assert_eq!((n.width, n.height), (40, 30));
    let framed = webp(&[(b"VP8X", vp8x(0, 40, 30)), (b"VP8L", vp8l_blank(40, 30))]);
    intake(&framed, &Limits::default()).expect("an extended header of the frame's size");

    // A 16x16 canvas (within any pixel limit) around an 8000x8000 lossless frame, refused by
    // the container check (the lossless decoder also compares before decoding; the lossy one
    // does not: the next test).
    let bomb = webp(&[
        (b"VP8X", vp8x(0, 16, 16)),
        (b"VP8L", vp8l_blank(8000, 8000)),
    ]);
    assert!(bomb.len() < 64, "{} bytes", bomb.len());
    refused_as_larger_than_its_canvas(&bomb);
}

#[test]
fn webp_chunks_beyond_the_file_and_animations_are_refused() {
    // An EXIF chunk declaring 4 GiB in a 60-byte file: the decoder would allocate it.
    let mut lying = webp(&[
        (b"VP8X", vp8x(0x08, 40, 30)),
        (b"VP8L", vp8l_blank(40, 30)),
        (b"EXIF", vec![0; 8]),
    ]);
    let exif = lying.len() - 12;
    lying[exif..exif + 4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let err = intake(&lying, &Limits::default()).expect_err("a chunk beyond the file");
    assert!(
        err.to_string().contains("beyond the end of the file"),
        "{err}"
    );

    let animated = webp(&[(b"VP8X", vp8x(0x02, 40, 30)), (b"ANIM", vec![0; 6])]);
    let err = intake(&animated, &Limits::default()).expect_err("an animation");
    assert!(err.to_string().contains("animated WebP"), "{err}");
    let no_image = webp(&[(b"VP8X", vp8x(0, 40, 30))]);
    let err = intake(&no_image, &Limits::default()).expect_err("no image");
    assert!(err.to_string().contains("holds no image"), "{err}");
}

/// A lossy frame (`VP8 `) is decoded at its own size before the decoder compares it with the
/// canvas (a lossless one is compared first). The fixture, made by
/// `fixtures/make_webp_bomb.py 8000 8000`, is 107 KB: a 16x16 canvas around an 8000x8000
/// frame of skipped macroblocks. Decoded, it raised the peak memory by 99 MiB and took a
/// second; at 16383x16383 it is 400 MiB from 450 KB.
#[test]
fn a_lossy_webp_frame_larger_than_its_canvas_is_never_decoded() {
    let bomb = include_bytes!("fixtures/vp8-frame-8000-in-16-canvas.webp");
    refused_as_larger_than_its_canvas(bomb);
}

/// `bomb`, an 8000x8000 frame on a 16x16 canvas, is refused without raising the peak memory.
fn refused_as_larger_than_its_canvas(bomb: &[u8]) {
    let before = peak_kib();
    let err = intake(bomb, &Limits::default()).expect_err("the frame is not its canvas");
    let grew_mib = (peak_kib() - before) / 1024;
    assert!(grew_mib < 64, "the peak memory rose by {grew_mib} MiB");
    assert!(
        err.to_string()
            .contains("8000x8000 but its canvas is 16x16"),
        "{err}"
    );
}

/// A 40x30 WebP followed, just past its RIFF size, by an EXIF chunk declaring 4 GiB: the
/// decoder reads chunk headers somewhat past the RIFF size, and would allocate it.
fn chunk_past_the_riff_size() -> Vec<u8> {
    let mut f = webp(&[(b"VP8X", vp8x(0, 40, 30)), (b"VP8L", vp8l_blank(40, 30))]);
    f.extend_from_slice(b"EXIF");
    f.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f
}

/// The decoder is given a WebP only up to its RIFF size. Checked in a child process limited to
/// 1 GiB of address space (`prlimit`): a 4 GiB allocation, which the resident memory would not
/// show (the pages are never touched), aborts it; on a host without overcommit it would abort
/// the server.
#[test]
fn a_chunk_past_the_riff_size_is_never_allocated() {
    const CHILD: &str = "AFTERVIEW_WEBP_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let n = intake(&chunk_past_the_riff_size(), &Limits::default())
            .expect("the photo within the RIFF size");
        assert_eq!((n.width, n.height), (40, 30));
        return;
    }
    let out = std::process::Command::new("prlimit")
        .arg("--as=1073741824")
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_chunk_past_the_riff_size_is_never_allocated",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("prlimit (util-linux)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

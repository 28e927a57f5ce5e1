//! Compressed metadata bombs: a small PNG whose colour-profile chunk inflates to hundreds of
//! megabytes must be taken (or refused) without inflating it. Alone in its test binary, so the
//! process's peak memory (`VmHWM`) is this test's.

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

//! Photo intake, its own small crate so that the API can check uploads without linking the
//! preview engine.
//!
//! Accept JPEG, PNG and WebP by content, enforce the byte and pixel limits before
//! decoding, apply the EXIF orientation, convert to sRGB by the embedded colour profile, drop
//! every piece of metadata, and store a normalized PNG (sRGB, RGB, 8 bits, no text chunks, no
//! EXIF, no profile).
//!
//! Order matters for safety: size check, magic-byte sniff, header-only dimension read and pixel
//! check, then the decode. A decompression bomb (a tiny file declaring a huge image) is refused
//! at the header; that pixel check is the memory bound that holds. The decoders are told the
//! declared width and height, but `image`'s `max_alloc` is enforced only by `ImageReader::decode`,
//! not on the decoder path used here (it reads the EXIF orientation first), so a decode may take
//! the output buffer (at most 4 bytes per allowed pixel) plus the decoder's own working memory,
//! also proportional to the pixels (a progressive JPEG's coefficients: about 2 bytes per pixel
//! and component). The API bounds how many decodes run at once.
//!
//! [`thumbnail`] makes a picture's small copy (a JPEG, no metadata) for lists: made from the
//! normalized pixels, so nothing of the upload's metadata reaches it either.

use std::io::Cursor;

use afterview_core::ErrorCode;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageFormat, ImageReader, RgbImage};

/// Default byte limit (20 MB).
pub const DEFAULT_MAX_BYTES: usize = 20 * 1000 * 1000;
/// Default pixel limit (40 megapixels).
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// Intake limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted file.
    pub max_bytes: usize,
    /// Largest accepted width × height.
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// The accepted source formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// JPEG.
    Jpeg,
    /// PNG.
    Png,
    /// WebP.
    Webp,
}

impl SourceFormat {
    fn image_format(self) -> ImageFormat {
        match self {
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Png => ImageFormat::Png,
            Self::Webp => ImageFormat::WebP,
        }
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Webp => "webp",
        }
    }
}

/// Why a photo was refused. Each variant has its own stable code ([`IntakeError::code`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IntakeError {
    /// Zero bytes.
    #[error("the file is empty")]
    Empty,
    /// Over the byte limit.
    #[error("the file has {size} bytes; the limit is {limit}")]
    TooLarge {
        /// File size.
        size: usize,
        limit: usize,
    },
    /// Not JPEG, PNG or WebP.
    #[error("unsupported image format{}: upload a JPEG, PNG or WebP photo", .detected.map(|d| format!(" ({d})")).unwrap_or_default())]
    Unsupported {
        /// What the content looks like, when recognizable.
        detected: Option<&'static str>,
    },
    /// Over the pixel limit (checked before decoding).
    #[error("the image is {width}x{height} ({} megapixels); the limit is {} megapixels", (*.width as u64 * *.height as u64) / 1_000_000, .limit / 1_000_000)]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        limit: u64,
    },
    /// Truncated or damaged.
    #[error("the image could not be decoded: {0}")]
    Corrupt(String),
}

impl IntakeError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Empty => ErrorCode::EmptyFile,
            Self::TooLarge { .. } => ErrorCode::FileTooLarge,
            Self::Unsupported { .. } => ErrorCode::UnsupportedFormat,
            Self::TooManyPixels { .. } => ErrorCode::ImageTooLarge,
            Self::Corrupt(_) => ErrorCode::CorruptImage,
        }
    }
}

/// A photo after intake.
#[derive(Debug, Clone)]
pub struct Normalized {
    /// The normalized photo: PNG, RGB 8-bit, upright, no metadata.
    pub png: Vec<u8>,
    /// Width after orientation.
    pub width: u32,
    /// Height after orientation.
    pub height: u32,
    /// What was uploaded.
    pub source_format: SourceFormat,
    /// Its small copy ([`thumbnail`]).
    pub thumbnail: Vec<u8>,
}

/// Recognizes the format from the first bytes.
pub fn sniff(bytes: &[u8]) -> Result<SourceFormat, IntakeError> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(SourceFormat::Jpeg);
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(SourceFormat::Png);
    }
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Ok(SourceFormat::Webp);
    }
    let detected = if bytes.starts_with(b"GIF8") {
        Some("gif")
    } else if bytes.starts_with(b"BM") {
        Some("bmp")
    } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        Some("tiff")
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        // ISO media files share the box; the brand tells a photo from a video.
        match &bytes[8..12] {
            b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" | b"mif1" | b"msf1" => {
                Some("heic")
            }
            b"avif" | b"avis" => Some("avif"),
            _ => Some("video"),
        }
    } else if bytes.starts_with(b"%PDF") {
        Some("pdf")
    } else if bytes.iter().take(512).all(|b| b.is_ascii()) {
        Some("text")
    } else {
        None
    };
    Err(IntakeError::Unsupported { detected })
}

/// Checks, decodes, orients, converts to sRGB and normalizes an uploaded photo.
pub fn intake(bytes: &[u8], limits: &Limits) -> Result<Normalized, IntakeError> {
    let (img, source_format) = decode_upright(bytes, limits)?;
    let (width, height) = img.dimensions();
    Ok(Normalized {
        png: encode_png(&img),
        width,
        height,
        source_format,
        thumbnail: thumbnail(&img),
    })
}

/// The checked, decoded, upright photo (what [`intake`] stores, before encoding).
pub fn decode_upright(
    bytes: &[u8],
    limits: &Limits,
) -> Result<(RgbImage, SourceFormat), IntakeError> {
    if bytes.is_empty() {
        return Err(IntakeError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(IntakeError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let format = sniff(bytes)?;
    if format == SourceFormat::Jpeg && !has_jpeg_end(bytes) {
        // JPEG decoders fill a truncated scan with grey; refuse it instead.
        return Err(IntakeError::Corrupt(
            "the JPEG is truncated (no end-of-image marker)".into(),
        ));
    }
    // A WebP is read only up to its RIFF size (the decoder reads chunk headers past it).
    let bytes = match format {
        SourceFormat::Webp => &bytes[..check_webp(bytes)?],
        _ => bytes,
    };
    let (width, height) = dimensions(bytes, format)?;
    if width == 0 || height == 0 {
        return Err(IntakeError::Corrupt("the image has no pixels".into()));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(IntakeError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    if format == SourceFormat::Png {
        let mut img = decode_png_8bit(bytes)?;
        to_srgb(&mut img, png_profile(bytes).as_deref());
        return Ok((img, format));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(width);
    decode_limits.max_image_height = Some(height);
    // JPEG and WebP decode to 8 bits per channel: RGBA8 is the widest buffer they need, plus
    // slack for the decoder's own work (advisory: see the crate's documentation).
    decode_limits.max_alloc = Some(u64::from(width) * u64::from(height) * 4 + (64 << 20));
    reader.limits(decode_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| IntakeError::Corrupt(e.to_string()))?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let profile = decoder.icc_profile().ok().flatten();
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| IntakeError::Corrupt(e.to_string()))?;
    img.apply_orientation(orientation);
    let mut img = flatten(img);
    to_srgb(&mut img, profile.as_deref());
    Ok((img, format))
}

/// The largest colour profile read (real ones are a few hundred bytes to a few hundred KB).
const MAX_PROFILE: usize = 1 << 20;

/// A PNG's colour profile (`iCCP`), read by a decoder that may inflate at most
/// [`MAX_PROFILE`] bytes: a profile that inflates further is ignored, never inflated whole.
fn png_profile(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut decoder =
        png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: MAX_PROFILE });
    decoder.set_ignore_text_chunk(true);
    let reader = decoder.read_info().ok()?;
    reader.info().icc_profile.as_ref().map(|p| p.to_vec())
}

/// Converts pixels described by an embedded colour profile to sRGB, as which the stored photo
/// (a PNG without a profile) and everything made from it is read: an iPhone's Display P3 or a
/// camera's Adobe RGB photo would otherwise look duller than on the patient's phone. Profiles
/// with sRGB's primaries are left alone (the pixels are already what they mean), and so are
/// profiles that cannot be read or are not RGB (the pixels are then taken as sRGB, as a
/// browser without colour management would).
fn to_srgb(img: &mut RgbImage, profile: Option<&[u8]>) {
    use moxcms::{ColorProfile, DataColorSpace, Layout, TransformOptions};
    let Some(src) = profile.and_then(|p| ColorProfile::new_from_slice(p).ok()) else {
        return;
    };
    let srgb = ColorProfile::new_srgb();
    let close = |a: moxcms::Xyzd, b: moxcms::Xyzd| {
        (a.x - b.x).abs() < 0.003 && (a.y - b.y).abs() < 0.003 && (a.z - b.z).abs() < 0.003
    };
    if src.color_space != DataColorSpace::Rgb
        || (close(src.red_colorant, srgb.red_colorant)
            && close(src.green_colorant, srgb.green_colorant)
            && close(src.blue_colorant, srgb.blue_colorant))
    {
        return;
    }
    let Ok(t) =
        src.create_transform_8bit(Layout::Rgb, &srgb, Layout::Rgb, TransformOptions::default())
    else {
        return;
    };
    // Row by row: no second full-size buffer.
    let row = img.width() as usize * 3;
    let mut out = vec![0u8; row];
    for line in img.chunks_exact_mut(row) {
        if t.transform(line, &mut out).is_err() {
            return;
        }
        line.copy_from_slice(&out);
    }
}

/// The declared size, read from the headers only. A PNG's are read by a decoder that skips
/// text and colour-profile chunks and may allocate 16 MB: a tiny file whose compressed
/// `iCCP` or `zTXt` chunk inflates to gigabytes is never inflated (`image`'s reader would,
/// within its 512 MB default, before any limit of ours applies).
fn dimensions(bytes: &[u8], format: SourceFormat) -> Result<(u32, u32), IntakeError> {
    if format == SourceFormat::Png {
        let mut decoder = png_decoder(bytes, 16 << 20);
        let info = decoder
            .read_header_info()
            .map_err(|e| IntakeError::Corrupt(e.to_string()))?;
        return Ok((info.width, info.height));
    }
    ImageReader::with_format(Cursor::new(bytes), format.image_format())
        .into_dimensions()
        .map_err(|e| IntakeError::Corrupt(e.to_string()))
}

/// A WebP's container, checked before a decoder sees it, where the pixel limit alone does not
/// hold: every chunk lies within the file (a decoder allocates the size a chunk declares
/// before reading it: a colour profile or EXIF chunk could ask for 4 GiB in a 100-byte file),
/// the picture is one frame (a photo is not animated), and with an extended header (`VP8X`)
/// the frame has the canvas's size. The pixel limit is checked against the canvas, but the
/// decoder decodes the frame at its own declared size, up to 16383x16383 (1 GiB of pixels from
/// a file of a few bytes), before it compares the two.
/// Answers where the file ends by its RIFF header: the caller gives the decoder only that much,
/// as image-webp reads chunk headers somewhat past it (a chunk placed just after the RIFF
/// size would escape this walk and still be allocated).
fn check_webp(bytes: &[u8]) -> Result<usize, IntakeError> {
    let corrupt = |m: String| IntakeError::Corrupt(format!("the WebP {m}"));
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let end = bytes.len().min(le32(&bytes[4..8]).saturating_add(8));
    let (mut at, mut canvas, mut frame) = (12usize, None, None);
    while at < end {
        let header = bytes
            .get(at..at + 8)
            .filter(|_| at + 8 <= end)
            .ok_or_else(|| corrupt("ends inside a chunk header".into()))?;
        let (kind, size) = (&header[..4], le32(&header[4..]));
        let body = bytes
            .get(at + 8..)
            .and_then(|rest| rest.get(..size))
            .filter(|_| at + 8 + size <= end)
            .ok_or_else(|| {
                corrupt(format!(
                    "declares a {} chunk of {size} bytes, beyond the end of the file",
                    String::from_utf8_lossy(kind)
                ))
            })?;
        match kind {
            b"VP8X" => {
                let b = body
                    .get(..10)
                    .ok_or_else(|| corrupt("header is too short".into()))?;
                if b[0] & 0x02 != 0 {
                    return Err(IntakeError::Unsupported {
                        detected: Some("an animated WebP"),
                    });
                }
                let le24 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], 0]) + 1;
                canvas = Some((le24(&b[4..7]), le24(&b[7..10])));
            }
            b"ANIM" | b"ANMF" => {
                return Err(IntakeError::Unsupported {
                    detected: Some("an animated WebP"),
                });
            }
            b"VP8 " | b"VP8L" if frame.is_none() => frame = Some(webp_frame_size(kind, body)?),
            _ => {}
        }
        at += 8 + size + (size & 1);
    }
    match (canvas, frame) {
        (_, None) => Err(corrupt("holds no image".into())),
        (Some(c), Some(f)) if c != f => Err(corrupt(format!(
            "image is {}x{} but its canvas is {}x{}",
            f.0, f.1, c.0, c.1
        ))),
        _ => Ok(end),
    }
}

/// The size a WebP frame declares in its own header: lossy (`VP8 `, a key frame's start code
/// and two 14-bit sizes) or lossless (`VP8L`, its signature and two 14-bit sizes less one).
fn webp_frame_size(kind: &[u8], body: &[u8]) -> Result<(u32, u32), IntakeError> {
    let bad = || IntakeError::Corrupt("the WebP image header is damaged".into());
    if kind == b"VP8 " {
        let b = body.get(..10).ok_or_else(bad)?;
        if b[0] & 1 != 0 || b[3..6] != [0x9d, 0x01, 0x2a] {
            return Err(bad());
        }
        let size = |lo: u8, hi: u8| u32::from(u16::from_le_bytes([lo, hi]) & 0x3fff);
        return Ok((size(b[6], b[7]), size(b[8], b[9])));
    }
    let b = body.get(..5).ok_or_else(bad)?;
    if b[0] != 0x2f {
        return Err(bad());
    }
    let bits = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
    Ok(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
}

/// A PNG decoder that allocates at most `limit` bytes for chunks and skips the metadata chunks
/// the stored photo drops anyway (text, colour profile).
fn png_decoder(bytes: &[u8], limit: usize) -> png::Decoder<Cursor<&[u8]>> {
    let mut decoder =
        png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: limit });
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);
    decoder
}

/// Decodes a PNG straight to 8-bit RGB, row by row: 16-bit samples are stripped as they are
/// read (no 16-bit image in memory: a 300 KB 16-bit 6300×6300 PNG used to cost ~440 MB), palettes
/// and grey expanded, alpha composed over white. Interlaced files need one 8-bit frame first.
/// EXIF orientation (`eXIf`) is applied.
fn decode_png_8bit(bytes: &[u8]) -> Result<RgbImage, IntakeError> {
    let corrupt = |e: png::DecodingError| IntakeError::Corrupt(e.to_string());
    let mut decoder = png_decoder(bytes, 64 << 20);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let (width, height) = (reader.info().width, reader.info().height);
    let orientation = reader
        .info()
        .exif_metadata
        .as_deref()
        .and_then(image::metadata::Orientation::from_exif_chunk);
    let interlaced = reader.info().interlaced;
    let (color, depth) = reader.output_color_type();
    if depth != png::BitDepth::Eight {
        return Err(IntakeError::Corrupt(format!(
            "unexpected bit depth {depth:?}"
        )));
    }
    let channels = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(IntakeError::Corrupt("a palette was not expanded".into()));
        }
    };
    let mut out = RgbImage::new(width, height);
    let put_row = |out: &mut RgbImage, y: u32, row: &[u8]| {
        for (x, px) in row.chunks_exact(channels).take(width as usize).enumerate() {
            let (rgb, a) = match channels {
                1 => ([px[0]; 3], 255),
                2 => ([px[0]; 3], px[1]),
                3 => ([px[0], px[1], px[2]], 255),
                _ => ([px[0], px[1], px[2]], px[3]),
            };
            let a = u32::from(a);
            let mix = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
            out.put_pixel(x as u32, y, image::Rgb(rgb.map(mix)));
        }
    };
    if interlaced {
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| IntakeError::Corrupt("the image is too large to decode".into()))?;
        let mut buf = vec![0u8; size];
        let frame = reader.next_frame(&mut buf).map_err(corrupt)?;
        for (y, row) in buf
            .chunks_exact(frame.line_size)
            .take(height as usize)
            .enumerate()
        {
            put_row(&mut out, y as u32, row);
        }
    } else {
        let mut y = 0;
        while let Some(row) = reader.next_row().map_err(corrupt)? {
            if y >= height {
                break;
            }
            put_row(&mut out, y, row.data());
            y += 1;
        }
        if y < height {
            return Err(IntakeError::Corrupt("the PNG is truncated".into()));
        }
    }
    let mut img = DynamicImage::ImageRgb8(out);
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img.into_rgb8())
}

/// Whether a JPEG reaches its end-of-image marker (`FF D9`). The file is walked marker by
/// marker: segments are skipped by their length (an EXIF thumbnail holds a whole JPEG, end
/// marker included), and entropy-coded data never holds `FF D9` (an `FF` there is always
/// followed by `00` or a restart marker). A file without it was cut short. What follows the
/// marker is not looked at: phones append a video to a "motion photo" (Google's Motion Photo
/// format, Samsung's, Xiaomi's `MVIMG`), and some writers pad.
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    loop {
        // The next marker: FF (stray bytes before it skipped, as decoders do), any fill FFs,
        // then its code.
        let Some(at) = next_ff(bytes, i) else {
            return false;
        };
        i = at;
        while bytes.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        let Some(&code) = bytes.get(i + 1) else {
            return false;
        };
        i += 2;
        match code {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue, // no length
            _ => {}
        }
        let Some(len) = bytes
            .get(i..i + 2)
            .map(|b| usize::from(b[0]) << 8 | usize::from(b[1]))
        else {
            return false;
        };
        if len < 2 {
            return false;
        }
        i += len;
        if code == 0xDA {
            // A scan: entropy-coded data up to the next marker that is not a restart.
            loop {
                let Some(at) = next_ff(bytes, i) else {
                    return false;
                };
                i = at;
                match bytes.get(i + 1) {
                    None => return false,
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(0xFF) => i += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Where the next `FF` byte at or after `from` is.
fn next_ff(bytes: &[u8], from: usize) -> Option<usize> {
    Some(from + bytes.get(from..)?.iter().position(|&b| b == 0xFF)?)
}

/// RGB 8-bit; transparent pixels are composed over white.
fn flatten(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = u32::from(p[3]);
        let mix = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([mix(p[0]), mix(p[1]), mix(p[2])])
    })
}

/// Encodes PNG with fixed settings (the same pixels always give the same bytes).
pub fn encode_png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::with_capacity((img.width() * img.height()) as usize);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("encoding into memory cannot fail");
    out
}

/// The longest side of a [`thumbnail`], in pixels: a list's 48-pixel picture on a screen of
/// up to 4 device pixels per pixel, or a phone's wider card, without a visible blur.
pub const THUMBNAIL_SIDE: u32 = 256;

/// A small copy of `img` for lists: a baseline JPEG (quality 80, no metadata), its longest side
/// at most [`THUMBNAIL_SIDE`] (area-averaged; a smaller picture keeps its size), the aspect
/// ratio kept. A few KB where the picture is megabytes.
pub fn thumbnail(img: &RgbImage) -> Vec<u8> {
    let (w, h) = img.dimensions();
    let longest = w.max(h).max(1);
    let fit = |side: u32| {
        if longest <= THUMBNAIL_SIDE {
            side
        } else {
            ((u64::from(side) * u64::from(THUMBNAIL_SIDE) + u64::from(longest) / 2)
                / u64::from(longest))
            .max(1) as u32
        }
    };
    let (tw, th) = (fit(w), fit(h));
    let small;
    let img = if (tw, th) == (w, h) {
        img
    } else {
        small = image::imageops::thumbnail(img, tw, th);
        &small
    };
    let mut out = Vec::with_capacity(16 << 10);
    JpegEncoder::new_with_quality(&mut out, 80)
        .write_image(img.as_raw(), tw, th, image::ExtendedColorType::Rgb8)
        .expect("encoding into memory cannot fail");
    out
}

/// Decodes a PNG this crate produced (stored photos and previews). Without the decoder's
/// default 512 MiB allocation limit: the photo was checked against the pixel limit when it
/// came in, and a `--max-pixels` above ~179 megapixels would otherwise store photos that no
/// preview could read.
pub fn decode_png(bytes: &[u8]) -> Result<RgbImage, IntakeError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png);
    reader.no_limits();
    reader
        .decode()
        .map(DynamicImage::into_rgb8)
        .map_err(|e| IntakeError::Corrupt(e.to_string()))
}

/// Decodes any accepted format (e.g. a generated image from Gemini), within the limits.
pub fn decode_any(bytes: &[u8], limits: &Limits) -> Result<RgbImage, IntakeError> {
    decode_upright(bytes, limits).map(|(img, _)| img)
}

//! The local engine and intake, measured: determinism, locality, each procedure's direction on
//! a drawn face, no-face and bad-image errors, every intake limit.

use afterview_core::ErrorCode;
use afterview_core::tasks::{ControlPoints, Intensity};
use afterview_imaging::face::{Landmarks, detect_faces, locate};
use afterview_imaging::intake::{self, Limits, decode_png, encode_png, intake};
use afterview_imaging::procedures::PROCEDURES;
use afterview_imaging::{ImagingError, preview, render, simulate};
use image::{Rgb, RgbImage};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/portraits");

fn portrait(name: &str) -> RgbImage {
    let bytes = std::fs::read(format!("{ROOT}/{name}")).unwrap();
    intake::decode_upright(&bytes, &Limits::default())
        .unwrap()
        .0
}

// ---------------------------------------------------------------- a face the tests draw

const SKIN: [u8; 3] = [222, 180, 150];
const BG: [u8; 3] = [90, 110, 130];

fn in_ellipse(x: f32, y: f32, cx: f32, cy: f32, rx: f32, ry: f32) -> bool {
    ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2) <= 1.0
}

/// A 400×480 frontal face with known geometry; skin has a fixed fine texture.
fn drawn_face() -> RgbImage {
    RgbImage::from_fn(400, 480, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        let tex = (((x * 7919 + y * 104_729) % 23) as i32 - 11) as i16; // deterministic grain
        let skin = |t: i16| Rgb(SKIN.map(|c| (c as i16 + t).clamp(0, 255) as u8));
        let face = in_ellipse(fx, fy, 200.0, 260.0, 110.0, 165.0);
        let ear = in_ellipse(fx, fy, 82.0, 232.0, 22.0, 40.0)
            || in_ellipse(fx, fy, 318.0, 232.0, 22.0, 40.0);
        if !face && !ear {
            return Rgb(BG);
        }
        if face {
            // Brows.
            for cx in [150.0, 250.0] {
                if in_ellipse(fx, fy, cx, 144.0, 34.0, 6.0) {
                    return Rgb([70, 50, 40]);
                }
                if in_ellipse(fx, fy, cx, 180.0, 7.0, 7.0) {
                    return Rgb([30, 30, 40]); // iris
                }
                if in_ellipse(fx, fy, cx, 180.0, 22.0, 9.0) {
                    return Rgb([250, 250, 250]); // sclera
                }
            }
            // Nostrils and nose sides.
            for cx in [181.0, 219.0] {
                if in_ellipse(fx, fy, cx, 268.0, 9.0, 6.0) {
                    return Rgb([90, 60, 50]);
                }
            }
            if in_ellipse(fx, fy, 200.0, 330.0, 48.0, 13.0) {
                return Rgb([190, 60, 70]); // lips
            }
        }
        skin(tex)
    })
}

fn drawn_points() -> ControlPoints {
    ControlPoints {
        right_eye: [150.0, 180.0],
        left_eye: [250.0, 180.0],
        nose_tip: [200.0, 258.0],
        mouth_right: [158.0, 330.0],
        mouth_left: [242.0, 330.0],
        chin: Some([200.0, 422.0]),
    }
}

fn after(procedure: &str, intensity: Intensity) -> RgbImage {
    let img = drawn_face();
    let lm = Landmarks::from_control_points(&drawn_points(), img.width(), img.height()).unwrap();
    simulate(&img, procedure, intensity, &lm).unwrap().image
}

fn count(img: &RgbImage, pred: impl Fn(u32, u32, [u8; 3]) -> bool) -> usize {
    img.enumerate_pixels()
        .filter(|(x, y, p)| pred(*x, *y, p.0))
        .count()
}

fn is_red(p: [u8; 3]) -> bool {
    p[0] > 150 && p[1] < 110 && p[2] < 120
}

fn is_skinish(p: [u8; 3]) -> bool {
    p[0] > 180 && p[1] > 140 && p[2] > 110 && p[0] > p[2] + 40
}

/// Horizontal extent (min x, max x) of pixels matching `pred` in rows `y0..y1`.
fn extent(img: &RgbImage, y0: u32, y1: u32, pred: impl Fn([u8; 3]) -> bool) -> (u32, u32) {
    let mut lo = u32::MAX;
    let mut hi = 0;
    for y in y0..y1 {
        for x in 0..img.width() {
            if pred(img.get_pixel(x, y).0) {
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
    }
    (lo, hi)
}

#[test]
fn rhinoplasty_narrows_the_nose() {
    let before = drawn_face();
    let nostrils = |img: &RgbImage| extent(img, 258, 280, |p| p[0] < 120 && p[1] < 80);
    let (b0, b1) = nostrils(&before);
    let mut last = b1 - b0;
    for i in [
        Intensity::Subtle,
        Intensity::Moderate,
        Intensity::Pronounced,
    ] {
        let (a0, a1) = nostrils(&after("rhinoplasty", i));
        let w = a1 - a0;
        assert!(w < last, "{i:?}: nose width {w} not below {last}");
        last = w;
    }
    assert!(
        last as f32 <= (b1 - b0) as f32 * 0.85,
        "pronounced narrows by 15 % or more: {last} vs {}",
        b1 - b0
    );
}

#[test]
fn lip_augmentation_grows_the_lips() {
    let red_before = count(&drawn_face(), |_, _, p| is_red(p));
    let red_after = count(
        &after("lip-augmentation", Intensity::Moderate),
        |_, _, p| is_red(p),
    );
    assert!(
        red_after as f32 > red_before as f32 * 1.12,
        "{red_after} vs {red_before}"
    );
    let (lo_b, hi_b) = extent(&drawn_face(), 300, 360, is_red);
    let (lo_a, hi_a) = extent(
        &after("lip-augmentation", Intensity::Moderate),
        300,
        360,
        is_red,
    );
    assert!(
        (hi_a - lo_a) <= (hi_b - lo_b) + 8,
        "corners stay nearly fixed"
    );
}

#[test]
fn brow_lift_raises_the_brows() {
    let centroid = |img: &RgbImage| {
        let pts: Vec<u32> = img
            .enumerate_pixels()
            .filter(|(_, y, p)| *y < 165 && p.0 == [70, 50, 40])
            .map(|(_, y, _)| y)
            .collect();
        pts.iter().sum::<u32>() as f32 / pts.len() as f32
    };
    let b = centroid(&drawn_face());
    let a = centroid(&after("brow-lift", Intensity::Moderate));
    assert!(a < b - 2.5, "brows move up: {a} vs {b}");
}

#[test]
fn blepharoplasty_opens_the_eyes() {
    let sclera = |img: &RgbImage| {
        count(img, |_, y, p| {
            (160..200).contains(&y) && p.iter().all(|c| *c > 235)
        })
    };
    let b = sclera(&drawn_face());
    let a = sclera(&after("blepharoplasty", Intensity::Moderate));
    assert!(
        a as f32 > b as f32 * 1.05,
        "more of the eye shows: {a} vs {b}"
    );
}

#[test]
fn chin_augmentation_lengthens_the_chin() {
    let lowest = |img: &RgbImage| {
        (300..480)
            .rev()
            .find(|y| is_skinish(img.get_pixel(200, *y).0))
            .unwrap()
    };
    let b = lowest(&drawn_face());
    let a = lowest(&after("chin-augmentation", Intensity::Moderate));
    assert!(a >= b + 5, "chin moves down: {a} vs {b}");
}

#[test]
fn facelift_slims_the_jowls() {
    let width = |img: &RgbImage| {
        let (lo, hi) = extent(img, 340, 372, is_skinish);
        hi - lo
    };
    let b = width(&drawn_face());
    let a = width(&after("facelift", Intensity::Moderate));
    assert!(a + 4 <= b, "lower face narrows: {a} vs {b}");
}

#[test]
fn otoplasty_sets_the_ears_back() {
    let ears = |img: &RgbImage| extent(img, 200, 265, is_skinish);
    let (b0, b1) = ears(&drawn_face());
    let (a0, a1) = ears(&after("otoplasty", Intensity::Moderate));
    assert!(
        a0 >= b0 + 4 && a1 + 4 <= b1,
        "ears closer to the head: {a0}-{a1} vs {b0}-{b1}"
    );
}

#[test]
fn skin_resurfacing_smooths_texture_but_keeps_features() {
    let var = |img: &RgbImage, x0: u32, y0: u32| {
        let vals: Vec<f32> = (y0..y0 + 30)
            .flat_map(|y| (x0..x0 + 30).map(move |x| (x, y)))
            .map(|(x, y)| img.get_pixel(x, y).0[1] as f32)
            .collect();
        let m = vals.iter().sum::<f32>() / vals.len() as f32;
        vals.iter().map(|v| (v - m).powi(2)).sum::<f32>() / vals.len() as f32
    };
    let before = drawn_face();
    let a = after("skin-resurfacing", Intensity::Moderate);
    let (vb, va) = (var(&before, 120, 250), var(&a, 120, 250));
    assert!(va < vb * 0.6, "cheek texture variance drops: {va} vs {vb}");
    let iris = |img: &RgbImage| count(img, |_, _, p| p == [30, 30, 40]);
    assert_eq!(
        iris(&a),
        iris(&before),
        "the eyes are excluded and untouched"
    );
}

#[test]
fn intensity_orders_the_amount_of_change() {
    let base = drawn_face();
    for p in PROCEDURES {
        let diff = |i| {
            let a = after(p, i);
            a.pixels()
                .zip(base.pixels())
                .map(|(x, y)| {
                    (0..3)
                        .map(|c| (x.0[c] as i32 - y.0[c] as i32).unsigned_abs())
                        .sum::<u32>()
                })
                .sum::<u32>()
        };
        let (s, m, pr) = (
            diff(Intensity::Subtle),
            diff(Intensity::Moderate),
            diff(Intensity::Pronounced),
        );
        assert!(0 < s && s < m && m < pr, "{p}: {s} < {m} < {pr}");
    }
}

// ---------------------------------------------------------------- real photos

#[test]
fn the_detector_finds_the_test_portraits_and_not_a_coffee_cup() {
    let a = detect_faces(&portrait("astronaut.png"));
    assert_eq!(a.len(), 1);
    assert!(
        (150.0..200.0).contains(&a[0].x) && (50.0..90.0).contains(&a[0].y),
        "{a:?}"
    );
    assert_eq!(detect_faces(&portrait("grace_hopper.jpg")).len(), 1);
    assert!(detect_faces(&portrait("no_face_coffee.png")).is_empty());
    let err = preview(
        &portrait("no_face_coffee.png"),
        "rhinoplasty",
        Intensity::Moderate,
        None,
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NoFaceDetected);
}

#[test]
fn previews_are_deterministic_and_local() {
    let photo = portrait("grace_hopper.jpg");
    for p in PROCEDURES {
        let (one, _) = preview(&photo, p, Intensity::Pronounced, None).unwrap();
        let (two, _) = preview(&photo, p, Intensity::Pronounced, None).unwrap();
        assert_eq!(
            encode_png(&one.image),
            encode_png(&two.image),
            "{p}: byte-identical"
        );
        assert_ne!(one.image, photo, "{p} changes something");
        let mut outside_diff = 0;
        for (x, y, px) in one.image.enumerate_pixels() {
            if !one.region.contains(x, y) && px != photo.get_pixel(x, y) {
                outside_diff += 1;
            }
        }
        assert_eq!(
            outside_diff, 0,
            "{p}: zero pixel difference outside {:?}",
            one.region
        );
        let area = (one.region.x1 - one.region.x0) * (one.region.y1 - one.region.y0);
        assert!(
            area < photo.width() * photo.height() / 4,
            "{p}: the treated region is a small part of the photo"
        );
    }
}

#[test]
fn unknown_procedures_and_bad_control_points_are_refused() {
    let photo = drawn_face();
    assert!(matches!(
        preview(
            &photo,
            "liposuction",
            Intensity::Moderate,
            Some(&drawn_points())
        ),
        Err(ImagingError::UnknownProcedure(_))
    ));
    let mut cp = drawn_points();
    cp.nose_tip = [200.0, 900.0];
    assert_eq!(
        preview(&photo, "rhinoplasty", Intensity::Moderate, Some(&cp))
            .unwrap_err()
            .code(),
        ErrorCode::InvalidControlPoints
    );
    let mut cp = drawn_points();
    (cp.left_eye, cp.right_eye) = (cp.right_eye, cp.left_eye);
    assert_eq!(
        preview(&photo, "rhinoplasty", Intensity::Moderate, Some(&cp))
            .unwrap_err()
            .code(),
        ErrorCode::InvalidControlPoints
    );
    let mut cp = drawn_points();
    cp.mouth_left = [242.0, 100.0];
    cp.mouth_right = [158.0, 100.0];
    assert!(
        preview(&photo, "rhinoplasty", Intensity::Moderate, Some(&cp)).is_err(),
        "mouth above the eyes"
    );
    // Control points override detection: a photo without a face works with them.
    let coffee = portrait("no_face_coffee.png");
    let cp = ControlPoints {
        right_eye: [250.0, 150.0],
        left_eye: [350.0, 150.0],
        nose_tip: [300.0, 220.0],
        mouth_right: [260.0, 280.0],
        mouth_left: [340.0, 280.0],
        chin: None,
    };
    let lm = locate(&coffee, Some(&cp)).unwrap();
    assert!(lm.chin.y > 280.0);
}

#[test]
fn the_label_only_touches_its_corner() {
    let photo = portrait("astronaut.png");
    let mut labelled = photo.clone();
    let r = render::label(&mut labelled, "SIMULATION");
    assert!(r.x0 > 300 && r.y0 > 440, "{r:?}");
    let changed: Vec<(u32, u32)> = labelled
        .enumerate_pixels()
        .filter(|(x, y, p)| *p != photo.get_pixel(*x, *y))
        .map(|(x, y, _)| (x, y))
        .collect();
    assert!(changed.len() > 500);
    assert!(changed.iter().all(|(x, y)| r.contains(*x, *y)));
    let bright = changed
        .iter()
        .filter(|(x, y)| labelled.get_pixel(*x, *y).0.iter().all(|c| *c > 200))
        .count();
    assert!(bright > 50, "white text is drawn");
}

#[test]
fn composites_put_panels_side_by_side() {
    let a = RgbImage::from_pixel(200, 100, Rgb([255, 0, 0]));
    let b = RgbImage::from_pixel(100, 100, Rgb([0, 0, 255]));
    let c = render::compose(&[("Original", &a), ("Rhinoplasty", &b)], 200);
    assert!(c.width() >= 600 && c.width() < 640, "{}", c.width());
    assert!(c.height() > 200);
    assert_eq!(c.get_pixel(100, 100).0, [255, 0, 0]);
    assert_eq!(c.get_pixel(c.width() - 100, 100).0, [0, 0, 255]);
}

// ---------------------------------------------------------------- intake

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 4) as u8, (y * 4) as u8, 128]));
    let mut out = vec![];
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .unwrap();
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid 1×1 PNG whose header then claims `w × h` (a decompression bomb's header).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut png = encode_png(&RgbImage::new(1, 1));
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// Inserts an EXIF APP1 segment with the given orientation after the JPEG's SOI.
fn with_exif_orientation(jpg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpg[2..]);
    out
}

fn png_chunks(png: &[u8]) -> Vec<String> {
    let mut i = 8;
    let mut names = vec![];
    while i + 8 <= png.len() {
        let len = u32::from_be_bytes(png[i..i + 4].try_into().unwrap()) as usize;
        names.push(String::from_utf8_lossy(&png[i + 4..i + 8]).into_owned());
        i += 12 + len;
    }
    names
}

#[test]
fn each_intake_rejection_has_its_code() {
    let l = Limits::default();
    assert_eq!(intake(&[], &l).unwrap_err().code(), ErrorCode::EmptyFile);
    let small = Limits {
        max_bytes: 1000,
        ..l
    };
    assert_eq!(
        intake(&jpeg(64, 64), &small).unwrap_err().code(),
        ErrorCode::FileTooLarge
    );
    assert_eq!(
        intake(b"GIF89a\x01\0\x01\0", &l).unwrap_err().code(),
        ErrorCode::UnsupportedFormat
    );
    assert_eq!(
        intake(b"hello, this is text", &l).unwrap_err().to_string(),
        "unsupported image format (text): upload a JPEG, PNG or WebP photo"
    );
    let bomb = png_claiming(100_000, 100_000);
    assert!(bomb.len() < 200, "a tiny file");
    let err = intake(&bomb, &l).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ImageTooLarge, "{err}");
    let mp = Limits {
        max_pixels: 1000,
        ..l
    };
    assert_eq!(
        intake(&jpeg(64, 64), &mp).unwrap_err().code(),
        ErrorCode::ImageTooLarge
    );
    let j = jpeg(64, 64);
    assert_eq!(
        intake(&j[..j.len() / 2], &l).unwrap_err().code(),
        ErrorCode::CorruptImage,
        "truncated"
    );
    let mut garbage = b"\x89PNG\r\n\x1a\n".to_vec();
    garbage.extend_from_slice(&[7u8; 100]);
    assert_eq!(
        intake(&garbage, &l).unwrap_err().code(),
        ErrorCode::CorruptImage
    );
}

#[test]
fn intake_accepts_jpeg_png_webp_by_content_and_normalizes() {
    let l = Limits::default();
    let from_jpeg = intake(&jpeg(40, 30), &l).unwrap();
    assert_eq!(
        (
            from_jpeg.width,
            from_jpeg.height,
            from_jpeg.source_format.as_str()
        ),
        (40, 30, "jpeg")
    );
    let img = RgbImage::from_fn(20, 10, |x, _| Rgb([x as u8 * 10, 0, 0]));
    let png = encode_png(&img);
    assert_eq!(
        decode_png(&intake(&png, &l).unwrap().png).unwrap(),
        img,
        "PNG round-trips losslessly"
    );
    let mut webp = vec![];
    image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
        .encode(img.as_raw(), 20, 10, image::ExtendedColorType::Rgb8)
        .unwrap();
    let n = intake(&webp, &l).unwrap();
    assert_eq!(
        (n.source_format.as_str(), decode_png(&n.png).unwrap()),
        ("webp", img)
    );
}

#[test]
fn exif_orientation_is_applied_and_all_metadata_dropped() {
    let rotated = with_exif_orientation(&jpeg(40, 20), 6);
    assert!(rotated.windows(4).any(|w| w == b"Exif"));
    let n = intake(&rotated, &Limits::default()).unwrap();
    assert_eq!((n.width, n.height), (20, 40), "rotated upright");
    assert!(!n.png.windows(4).any(|w| w == b"Exif" || w == b"eXIf"));
    assert_eq!(
        png_chunks(&n.png),
        ["IHDR", "IDAT", "IEND"],
        "no metadata chunks"
    );
}

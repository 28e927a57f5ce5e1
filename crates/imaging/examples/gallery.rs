//! Renders docs/gallery.md: every procedure at every intensity on the test portraits, with a
//! difference map. `cargo run --release -p afterview-imaging --example gallery`
//!
//! With arguments, renders those photos into `--out DIR` instead (no markdown):
//! `... --example gallery -- --out /tmp/g photo1.jpg photo2.png`

use std::fmt::Write as _;

use afterview_core::tasks::Intensity;
use afterview_imaging::intake::{Limits, decode_upright, encode_png};
use afterview_imaging::procedures::PROCEDURES;
use afterview_imaging::{face, face_window, render, simulate};
use image::{Rgb, RgbImage};

fn crop(img: &RgbImage, r: afterview_imaging::Rect) -> RgbImage {
    image::imageops::crop_imm(img, r.x0, r.y0, r.width(), r.height()).to_image()
}

/// |after − before|, amplified 4×, over a dimmed copy of the photo.
fn difference(before: &RgbImage, after: &RgbImage) -> RgbImage {
    RgbImage::from_fn(before.width(), before.height(), |x, y| {
        let (a, b) = (after.get_pixel(x, y).0, before.get_pixel(x, y).0);
        let d = (0..3).map(|c| a[c].abs_diff(b[c])).max().unwrap_or(0) as u32;
        let g = (b[0] as u32 + b[1] as u32 + b[2] as u32) / 12;
        let hot = (d * 4).min(255);
        Rgb([
            (g + hot).min(255) as u8,
            (g + hot / 3).min(255) as u8,
            g as u8,
        ])
    })
}

fn render_rows(name: &str, img: &RgbImage, out_dir: &str, md: &mut String) {
    let lm = match face::locate(img, None) {
        Ok(lm) => lm,
        Err(e) => {
            eprintln!("{name}: {e}");
            return;
        }
    };
    let window = face_window(&lm, img.width(), img.height(), 0.85, 0.8);
    let _ = write!(md, "\n## {name}\n\n");
    for proc_id in PROCEDURES {
        let afters: Vec<Option<RgbImage>> = [
            Intensity::Subtle,
            Intensity::Moderate,
            Intensity::Pronounced,
        ]
        .iter()
        .map(|i| match simulate(img, proc_id, *i, &lm) {
            Ok(s) => Some(s.image),
            Err(e) => {
                eprintln!("{name} {proc_id}: {e}");
                None
            }
        })
        .collect();
        let Some(moderate) = &afters[1] else {
            let _ = writeln!(
                md,
                "### {proc_id}\n\nNot shown: {}\n",
                simulate(img, proc_id, Intensity::Moderate, &lm)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            );
            continue;
        };
        let before = crop(img, window);
        let crops: Vec<RgbImage> = afters
            .iter()
            .map(|a| crop(a.as_ref().unwrap_or(img), window))
            .collect();
        let diff = difference(&before, &crop(moderate, window));
        let panels = [
            ("Original", &before),
            ("Subtle", &crops[0]),
            ("Moderate", &crops[1]),
            ("Pronounced", &crops[2]),
            ("Change (moderate, 4x)", &diff),
        ];
        let row = render::compose(&panels, 400);
        let path = format!("{out_dir}/{name}-{proc_id}.png");
        std::fs::write(&path, encode_png(&row)).unwrap();
        let _ = writeln!(
            md,
            "### {proc_id}\n\n![{name} {proc_id}](gallery/{name}-{proc_id}.png)\n"
        );
    }
}

fn load(path: &str) -> RgbImage {
    let bytes = std::fs::read(path).unwrap();
    decode_upright(&bytes, &Limits::default()).unwrap().0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    if args.first().map(String::as_str) == Some("--out") {
        let out_dir = &args[1];
        std::fs::create_dir_all(out_dir).unwrap();
        let mut md = String::new();
        for p in &args[2..] {
            let stem = std::path::Path::new(p)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .to_string();
            render_rows(&stem, &load(p), out_dir, &mut md);
        }
        return;
    }
    let out_dir = format!("{root}/docs/gallery");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut md = String::from(
        "# Preview gallery\n\nMade by the local engine (`afterview-local/2`): each row is one procedure on a \
         public-domain test portrait (see `testdata/portraits/README.md`), cropped to the face as comparisons \
         and reports are; columns are the original, the three intensities and the change at `moderate` \
         (difference ×4). Regenerate with `cargo run --release -p afterview-imaging --example gallery`.\n\n\
         Landmarks are detected (MediaPipe Face Mesh + Iris, bundled); each recipe moves one feature's \
         outline by clinical millimetres measured from the iris, and nothing outside the face outline moves \
         (the neck under the jaw for a facelift or a chin, the ears for otoplasty); skin procedures change \
         texture and shading instead (skin resurfacing's fine lines, a blepharoplasty's under-eye bags, a \
         facelift's folds). Glasses frames stay rigid \
         while the skin behind them moves (Grace Hopper's brow lift and blepharoplasty). `tilted` is Grace \
         Hopper rotated by 8 degrees: the recipes follow the face's own axes.\n",
    );
    let hopper = load(&format!("{root}/testdata/portraits/grace_hopper.jpg"));
    let tilted = rotate(&hopper, 8f32.to_radians());
    for (name, img) in [
        (
            "astronaut",
            load(&format!("{root}/testdata/portraits/astronaut.png")),
        ),
        ("grace_hopper", hopper),
        ("tilted", tilted),
    ] {
        render_rows(name, &img, &out_dir, &mut md);
    }
    std::fs::write(format!("{root}/docs/gallery.md"), md).unwrap();
    println!("wrote {out_dir}");
}

/// Rotates about the centre (bilinear, edges clamped), same size.
fn rotate(img: &RgbImage, angle: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (s, c) = angle.sin_cos();
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - cx, y as f32 - cy);
        let (sx, sy) = (cx + dx * c + dy * s, cy - dx * s + dy * c);
        let sx = sx.clamp(0.0, (w - 1) as f32);
        let sy = sy.clamp(0.0, (h - 1) as f32);
        let (x0, y0) = (sx.floor() as u32, sy.floor() as u32);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
        let p = |xx, yy| img.get_pixel(xx, yy).0;
        Rgb([0, 1, 2].map(|i| {
            let top = p(x0, y0)[i] as f32 * (1.0 - fx) + p(x1, y0)[i] as f32 * fx;
            let bot = p(x0, y1)[i] as f32 * (1.0 - fx) + p(x1, y1)[i] as f32 * fx;
            (top * (1.0 - fy) + bot * fy + 0.5) as u8
        }))
    })
}

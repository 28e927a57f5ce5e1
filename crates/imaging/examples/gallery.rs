//! Renders docs/gallery.md: every procedure at every intensity on the test portraits.
//! `cargo run --release -p afterview-imaging --example gallery`

use std::fmt::Write as _;

use afterview_core::tasks::Intensity;
use afterview_imaging::face::{Landmarks, detect_faces};
use afterview_imaging::intake::{Limits, decode_upright, encode_png};
use afterview_imaging::procedures::PROCEDURES;
use afterview_imaging::{render, simulate};
use image::RgbImage;

fn crop(img: &RgbImage, lm: &Landmarks) -> RgbImage {
    let f = lm.frame();
    let c = f.at(0.0, 0.75);
    let half = 1.85 * f.iod;
    let x0 = (c.x - half).max(0.0) as u32;
    let y0 = (c.y - half * 1.05).max(0.0) as u32;
    let side = (2.0 * half) as u32;
    let w = side.min(img.width() - x0);
    let h = ((side as f32 * 1.05) as u32).min(img.height() - y0);
    image::imageops::crop_imm(img, x0, y0, w, h).to_image()
}

fn main() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out_dir = format!("{root}/docs/gallery");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut md = String::from(
        "# Preview gallery\n\nMade by the local engine (`afterview-local/1`): each row is one procedure on a \
         public-domain test portrait (see `testdata/portraits/README.md`), cropped to the face; columns are the \
         original and the three intensities. Regenerate with \
         `cargo run --release -p afterview-imaging --example gallery`.\n\n\
         The face box comes from the bundled SeetaFace detector and the landmarks from face proportions inside \
         it; the warps move the patient's own pixels (nothing is painted), and everything outside each \
         procedure's region is untouched.\n",
    );
    for (name, file) in [
        ("astronaut", "astronaut.png"),
        ("grace_hopper", "grace_hopper.jpg"),
    ] {
        let bytes = std::fs::read(format!("{root}/testdata/portraits/{file}")).unwrap();
        let (img, _) = decode_upright(&bytes, &Limits::default()).unwrap();
        let face = detect_faces(&img)[0];
        let lm = Landmarks::from_box(&face);
        let _ = write!(md, "\n## {name}\n\n");
        for proc_id in PROCEDURES {
            let before = crop(&img, &lm);
            let afters: Vec<RgbImage> = [
                Intensity::Subtle,
                Intensity::Moderate,
                Intensity::Pronounced,
            ]
            .iter()
            .map(|i| crop(&simulate(&img, proc_id, *i, &lm).unwrap().image, &lm))
            .collect();
            let panels = [
                ("Original", &before),
                ("Subtle", &afters[0]),
                ("Moderate", &afters[1]),
                ("Pronounced", &afters[2]),
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
    std::fs::write(format!("{root}/docs/gallery.md"), md).unwrap();
    println!("wrote {out_dir}");
}

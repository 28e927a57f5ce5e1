//! Writes sample outputs into docs/samples: a 3-procedure report (PDF) made from the test
//! portraits with the local engine, and the infographic in both formats.
//! `cargo run --release -p afterview-reports --example samples`

use std::sync::Arc;

use afterview_core::catalog::Catalog;
use afterview_core::tasks::Intensity;
use afterview_imaging::face;
use afterview_imaging::intake::{Limits, decode_upright};
use afterview_reports::infographic::DEFAULT_COLORS;
use afterview_reports::{
    InfographicInput, Paper, Patient, ReportInput, ReportItem, infographic_png, infographic_svg,
    render_report,
};

fn main() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = format!("{root}/docs/samples");
    std::fs::create_dir_all(&out).unwrap();
    let bytes = std::fs::read(format!("{root}/testdata/portraits/grace_hopper.jpg")).unwrap();
    let (photo, _) = decode_upright(&bytes, &Limits::default()).unwrap();
    let lm = face::detect(&photo).expect("a face in the test portrait");
    let c = Catalog::builtin();
    // Crop to the face, as the export task does.
    let r = afterview_imaging::face_window(&lm, photo.width(), photo.height(), 0.7, 0.82);
    let crop = |img: &image::RgbImage| {
        image::imageops::crop_imm(img, r.x0, r.y0, r.width(), r.height()).to_image()
    };
    let photo = Arc::new(photo);
    let items = ["blepharoplasty", "facelift", "skin-resurfacing"]
        .iter()
        .map(|p| {
            let mut after = afterview_imaging::simulate(&photo, p, Intensity::Moderate, &lm)
                .unwrap()
                .image;
            afterview_imaging::render::label(&mut after, "SIMULATION");
            ReportItem {
                procedure: c.get(p).unwrap().clone(),
                intensity: "moderate".into(),
                engine: "local".into(),
                before: Arc::new(crop(&photo)),
                after: Arc::new(crop(&after)),
                visualization_id: (*p).into(),
            }
        })
        .collect();
    let input = ReportInput {
        reference: "AV-SAMPLE-0001".into(),
        date: "2026-11-29".into(),
        paper: Paper::Letter,
        patient: Patient {
            name: Some("Grace H. (sample)".into()),
            date_of_birth: Some("1906-12-09".into()),
            clinic: Some("Sample Aesthetic Clinic".into()),
            surgeon: Some("Dr. Sample Surgeon".into()),
            notes: Some(
                "Would like to look rested; prefers a natural result and a short recovery.".into(),
            ),
        },
        include_costs: true,
        currency: c.currency.clone(),
        cost_disclaimer: c.disclaimer.clone(),
        items,
    };
    std::fs::write(format!("{out}/report.pdf"), render_report(&input).unwrap()).unwrap();
    let info = InfographicInput {
        procedures: ["blepharoplasty", "facelift", "skin-resurfacing"]
            .iter()
            .map(|p| c.get(p).unwrap().clone())
            .collect(),
        currency: "USD".into(),
        colors: DEFAULT_COLORS.map(String::from),
    };
    std::fs::write(
        format!("{out}/infographic.svg"),
        infographic_svg(&info).unwrap(),
    )
    .unwrap();
    std::fs::write(
        format!("{out}/infographic.png"),
        infographic_png(&info).unwrap(),
    )
    .unwrap();
    println!("wrote {out}");
}

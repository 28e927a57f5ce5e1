//! `reports`: a 3-procedure consultation report (PDF) and the cost infographic (PNG, SVG).
//! Baseline in the same run: a one-page PDF with one line of text (the PDF writer's fixed cost:
//! font subsetting and serialization).

use std::sync::Arc;
use std::time::{Duration, Instant};

use afterview_core::catalog::Catalog;
use afterview_core::tasks::Intensity;
use afterview_imaging::face;
use afterview_imaging::intake::{Limits, decode_upright};
use afterview_reports::infographic::DEFAULT_COLORS;
use afterview_reports::{
    Fonts, InfographicInput, Paper, Patient, ReportInput, ReportItem, infographic_png,
    infographic_svg, render_report, render_report_with,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One table row: what, its time, and that time over the baseline's.
fn row(what: &str, d: Duration, base: Duration) {
    println!(
        "| {what} | {:.1} | {:.2}x |",
        ms(d),
        d.as_secs_f64() / base.as_secs_f64()
    );
}

pub(crate) fn run(iterations: usize) {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/portraits/grace_hopper.jpg"
    ))
    .unwrap();
    let (photo, _) = decode_upright(&bytes, &Limits::default()).unwrap();
    let lm = face::detect(&photo).expect("a face in the test portrait");
    let c = Catalog::builtin();
    let photo = Arc::new(photo);
    let procs = ["rhinoplasty", "facelift", "lip-augmentation"];
    let items: Vec<ReportItem> = procs
        .iter()
        .map(|p| ReportItem {
            procedure: c.get(p).unwrap().clone(),
            intensity: "moderate".into(),
            engine: "local".into(),
            before: photo.clone(),
            after: Arc::new(
                afterview_imaging::simulate(&photo, p, Intensity::Moderate, &lm)
                    .unwrap()
                    .image,
            ),
            visualization_id: (*p).into(),
        })
        .collect();
    let input = |items: Vec<ReportItem>| ReportInput {
        reference: "BENCH".into(),
        date: "2026-11-29".into(),
        paper: Paper::Letter,
        patient: Patient {
            name: Some("Bench Patient".into()),
            ..Patient::default()
        },
        include_costs: true,
        currency: "USD".into(),
        cost_disclaimer: c.disclaimer.clone(),
        items,
    };
    let full = input(items.clone());
    let mut one = input(items[..1].to_vec());
    one.items[0].before = Arc::new(image::RgbImage::new(8, 8));
    one.items[0].after = Arc::new(image::RgbImage::new(8, 8));
    let info = InfographicInput {
        procedures: procs.iter().map(|p| c.get(p).unwrap().clone()).collect(),
        currency: "USD".into(),
        colors: DEFAULT_COLORS.map(String::from),
    };
    let time = |f: &mut dyn FnMut()| {
        median(
            (0..iterations)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed()
                })
                .collect(),
        )
    };
    let base = time(&mut || {
        std::hint::black_box(render_report(&one).unwrap());
    });
    let report = time(&mut || {
        std::hint::black_box(render_report(&full).unwrap());
    });
    let png = time(&mut || {
        std::hint::black_box(infographic_png(&info).unwrap());
    });
    let svg = time(&mut || {
        std::hint::black_box(infographic_svg(&info).unwrap());
    });
    let pages = render_report(&full).unwrap().len();
    println!("# afterview-bench reports: median of {iterations} runs\n");
    println!("| output | time (ms) | vs baseline |");
    println!("|---|---|---|");
    println!(
        "| baseline: 1-procedure report with 8x8 pictures | {:.1} | 1.00x |",
        ms(base)
    );
    row(
        &format!("3-procedure report, 512x600 photos ({} KB)", pages / 1024),
        report,
        base,
    );
    row("infographic PNG, 3 procedures", png, base);
    println!(
        "| infographic SVG, 3 procedures | {:.2} | {:.3}x |",
        ms(svg),
        svg.as_secs_f64() / base.as_secs_f64()
    );
    cjk_rows(&one, base, &time);
}

/// The baseline report with Chinese and Japanese patient fields, set in an installed CJK face
/// (what subsetting a large fallback face adds), and with Latin fields and the face loaded but
/// unused.
fn cjk_rows(one: &ReportInput, base: Duration, time: &dyn Fn(&mut dyn FnMut()) -> Duration) {
    let Some(path) = [
        "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
        "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
        "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists()) else {
        println!("| (no CJK face installed: apt-get install fonts-droid-fallback) | - | - |");
        return;
    };
    let t = Instant::now();
    let fonts = Fonts::bundled()
        .with_fallback(path, std::fs::read(path).unwrap())
        .unwrap();
    let load = t.elapsed();
    let mut cjk = one.clone();
    cjk.patient.name = Some("王小明".into());
    cjk.patient.clinic = Some("東京美容クリニック".into());
    cjk.patient.notes = Some("鼻を少し細くしたいです。".repeat(10));
    let with_cjk = time(&mut || {
        std::hint::black_box(render_report_with(&cjk, &fonts).unwrap());
    });
    let unused = time(&mut || {
        std::hint::black_box(render_report_with(one, &fonts).unwrap());
    });
    let name = path.rsplit('/').next().unwrap_or(path);
    row(
        &format!("the baseline, CJK patient fields in {name}"),
        with_cjk,
        base,
    );
    row(
        &format!("the baseline, {name} loaded but unused"),
        unused,
        base,
    );
    println!("\nLoading {name} once, at start: {:.1} ms", ms(load));
}

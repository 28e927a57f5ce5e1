//! Draws the detected landmarks of a photo: every mesh point with its index, the irises, and
//! the face box. `cargo run --release -p afterview-imaging --example landmarks -- in.jpg out.png [zoom-region]`
use afterview_imaging::face::{self, Pt, detect_faces};
use afterview_imaging::render::draw_text;
use image::{Rgb, RgbImage};

fn dot(img: &mut RgbImage, p: Pt, r: i32, c: [u8; 3]) {
    for dy in -r..=r {
        for dx in -r..=r {
            let (x, y) = (p.x.round() as i32 + dx, p.y.round() as i32 + dy);
            if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
                img.put_pixel(x as u32, y as u32, Rgb(c));
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).unwrap();
    let img = afterview_imaging::intake::decode_upright(&bytes, &Default::default())
        .unwrap()
        .0;
    let t = std::time::Instant::now();
    let faces = detect_faces(&img);
    let td = t.elapsed();
    let lm = face::detect(&img);
    eprintln!(
        "detect {td:?}, all {:?}; {} boxes",
        t.elapsed(),
        faces.len()
    );
    let Some(lm) = lm else {
        eprintln!("no face");
        return;
    };
    let f = lm.frame();
    eprintln!(
        "irises {:?} measured={} px/mm {:.2} iod {:.1} ({:.1} mm)",
        lm.irises,
        lm.irises_measured,
        f.px_per_mm,
        f.iod,
        f.iod / f.px_per_mm
    );
    // Zoom onto the face so labels are readable.
    let zoom: f32 = args.get(3).and_then(|z| z.parse().ok()).unwrap_or(1600.0);
    // Optional: zoom around mesh point args[4] with a radius of args[5] mm.
    let focus: Vec<Pt> = match (args.get(4), args.get(5)) {
        (Some(i), Some(r)) => {
            let c = lm.points[i.parse::<usize>().unwrap()];
            let r = r.parse::<f32>().unwrap() * f.px_per_mm;
            vec![Pt::new(c.x - r, c.y - r), Pt::new(c.x + r, c.y + r)]
        }
        _ => lm.points.clone(),
    };
    let (lo, hi) = focus.iter().fold(
        (Pt::new(f32::MAX, f32::MAX), Pt::new(f32::MIN, f32::MIN)),
        |(lo, hi), p| {
            (
                Pt::new(lo.x.min(p.x), lo.y.min(p.y)),
                Pt::new(hi.x.max(p.x), hi.y.max(p.y)),
            )
        },
    );
    let pad = if args.len() > 5 {
        0.0
    } else {
        (hi.x - lo.x) * 0.25
    };
    let (x0, y0) = ((lo.x - pad).max(0.0), (lo.y - pad).max(0.0));
    let (x1, y1) = (
        (hi.x + pad).min(img.width() as f32),
        (hi.y + pad).min(img.height() as f32),
    );
    let k = zoom / (x1 - x0).max(y1 - y0);
    let crop = image::imageops::crop_imm(
        &img,
        x0 as u32,
        y0 as u32,
        (x1 - x0) as u32,
        (y1 - y0) as u32,
    )
    .to_image();
    let mut out = image::imageops::resize(
        &crop,
        ((x1 - x0) * k) as u32,
        ((y1 - y0) * k) as u32,
        image::imageops::FilterType::Triangle,
    );
    let map = |p: Pt| Pt::new((p.x - x0) * k, (p.y - y0) * k);
    for (i, p) in lm.points.iter().enumerate() {
        let q = map(*p);
        dot(&mut out, q, 2, [0, 255, 0]);
        draw_text(
            &mut out,
            &i.to_string(),
            q.x + 3.0,
            q.y - 2.0,
            11.0,
            [255, 255, 0],
            false,
        );
    }
    for ir in lm.irises {
        let c = map(ir.center);
        let r = ir.diameter / 2.0 * k;
        for a in 0..64 {
            let t = a as f32 / 64.0 * std::f32::consts::TAU;
            dot(
                &mut out,
                Pt::new(c.x + r * t.cos(), c.y + r * t.sin()),
                1,
                [0, 200, 255],
            );
        }
    }
    out.save(&args[2]).unwrap();
}

//! Before | after at moderate, zoomed on a mesh point: `... --example detail -- photo procedure point radius_mm out.png [intensity]`
use afterview_core::tasks::Intensity;
use afterview_imaging::intake::{Limits, decode_upright};
use afterview_imaging::{face, render, simulate};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let img = decode_upright(&std::fs::read(&a[0]).unwrap(), &Limits::default())
        .unwrap()
        .0;
    let lm = face::locate(&img, None).unwrap();
    let intensity = match a.get(5).map(String::as_str) {
        Some("subtle") => Intensity::Subtle,
        Some("pronounced") => Intensity::Pronounced,
        _ => Intensity::Moderate,
    };
    let t = std::time::Instant::now();
    let out = simulate(&img, &a[1], intensity, &lm).unwrap();
    eprintln!("simulate {:?}, region {:?}", t.elapsed(), out.region);
    let f = lm.frame();
    let c = lm.points[a[2].parse::<usize>().unwrap()];
    let r = f.px(a[3].parse().unwrap());
    let (x0, y0) = ((c.x - r).max(0.0) as u32, (c.y - r).max(0.0) as u32);
    let side = ((2.0 * r) as u32)
        .min(img.width() - x0)
        .min(img.height() - y0);
    let crop = |i: &image::RgbImage| image::imageops::crop_imm(i, x0, y0, side, side).to_image();
    let (b, af) = (crop(&img), crop(&out.image));
    let row = render::compose(&[("Before", &b), ("After", &af)], 560);
    row.save(&a[4]).unwrap();
}

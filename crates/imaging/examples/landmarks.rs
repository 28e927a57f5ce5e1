//! Draws the detected face box and the derived landmarks on a photo (for calibration):
//! `cargo run -p afterview-imaging --example landmarks -- in.jpg out.png`

use afterview_imaging::face::{Landmarks, Pt, detect_faces};
use afterview_imaging::intake::{Limits, decode_upright, encode_png};
use image::Rgb;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).unwrap();
    let (mut img, _) = decode_upright(&bytes, &Limits::default()).unwrap();
    let faces = detect_faces(&img);
    println!("{faces:?}");
    let mut dot = |p: Pt, c: [u8; 3]| {
        for dy in -2i32..=2 {
            for dx in -2i32..=2 {
                let (x, y) = (p.x as i32 + dx, p.y as i32 + dy);
                if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
                    img.put_pixel(x as u32, y as u32, Rgb(c));
                }
            }
        }
    };
    if let Some(b) = faces.first() {
        let lm = Landmarks::from_box(b);
        for i in 0..(b.w as i32) {
            dot(Pt::new(b.x + i as f32, b.y), [0, 255, 0]);
            dot(Pt::new(b.x + i as f32, b.y + b.h), [0, 255, 0]);
            dot(Pt::new(b.x, b.y + i as f32), [0, 255, 0]);
            dot(Pt::new(b.x + b.w, b.y + i as f32), [0, 255, 0]);
        }
        for p in [
            lm.right_eye,
            lm.left_eye,
            lm.nose_tip,
            lm.mouth_right,
            lm.mouth_left,
            lm.chin,
        ] {
            dot(p, [255, 0, 0]);
        }
    }
    let img = match faces.first() {
        Some(b) => {
            let (x, y) = (
                (b.x - 0.5 * b.w).max(0.0) as u32,
                (b.y - 0.4 * b.h).max(0.0) as u32,
            );
            let (w, h) = ((2.0 * b.w) as u32, (1.9 * b.h) as u32);
            let c = image::imageops::crop_imm(
                &img,
                x,
                y,
                w.min(img.width() - x),
                h.min(img.height() - y),
            )
            .to_image();
            let k = 480.0 / c.height() as f32;
            image::imageops::resize(
                &c,
                (c.width() as f32 * k) as u32,
                480,
                image::imageops::FilterType::Triangle,
            )
        }
        None => img,
    };
    std::fs::write(&args[2], encode_png(&img)).unwrap();
}

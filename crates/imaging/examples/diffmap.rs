//! Writes a difference heat map (changed pixels in red, amplified) for each procedure on a photo.
//! `cargo run -p afterview-imaging --example diffmap -- photo out-prefix`

use afterview_core::tasks::Intensity;
use afterview_imaging::face::{Landmarks, detect_faces};
use afterview_imaging::intake::{Limits, decode_upright, encode_png};
use afterview_imaging::procedures::PROCEDURES;
use afterview_imaging::simulate;
use image::Rgb;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (img, _) = decode_upright(&std::fs::read(&a[1]).unwrap(), &Limits::default()).unwrap();
    let lm = Landmarks::from_box(&detect_faces(&img)[0]);
    for p in PROCEDURES {
        let out = simulate(&img, p, Intensity::Pronounced, &lm).unwrap();
        let mut map = image::imageops::grayscale(&img);
        let mut vis = image::RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let g = map.get_pixel_mut(x, y).0[0] / 2;
            Rgb([g, g, g])
        });
        let mut n = 0;
        for (x, y, q) in out.image.enumerate_pixels() {
            let o = img.get_pixel(x, y);
            let d = (0..3)
                .map(|c| (q.0[c] as i32 - o.0[c] as i32).abs())
                .max()
                .unwrap();
            if d > 0 {
                n += 1;
                vis.put_pixel(x, y, Rgb([(128 + d * 8).min(255) as u8, 0, 0]));
            }
        }
        println!("{p}: {n} px changed, region {:?}", out.region);
        std::fs::write(format!("{}-{p}.png", a[2]), encode_png(&vis)).unwrap();
    }
}

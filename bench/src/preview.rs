//! `preview`: time per procedure of the local engine on a 1024×1024 portrait (astronaut.png
//! upscaled): landmarks (BlazeFace + Face Mesh twice + Iris twice), the warp, the label and the
//! PNG encode, each measured; the baseline in the same run is a plain PNG encode of the photo
//! (the cost of any output at all).

use std::time::{Duration, Instant};

use afterview_core::tasks::Intensity;
use afterview_imaging::face::{self, detect_faces};
use afterview_imaging::intake::{Limits, decode_upright, encode_png};
use afterview_imaging::procedures::PROCEDURES;
use afterview_imaging::{render, simulate};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn run(iterations: usize) {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/portraits/astronaut.png"
    ))
    .unwrap();
    let (small, _) = decode_upright(&bytes, &Limits::default()).unwrap();
    let photo =
        image::imageops::resize(&small, 1024, 1024, image::imageops::FilterType::CatmullRom);
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

    let encode = time(&mut || {
        std::hint::black_box(encode_png(&photo));
    });
    let detect = time(&mut || {
        std::hint::black_box(detect_faces(&photo));
    });
    let landmarks = time(&mut || {
        std::hint::black_box(face::detect(&photo));
    });
    let lm = face::detect(&photo).expect("a face");
    println!("# afterview-bench preview: 1024x1024 photo, median of {iterations} runs\n");
    println!(
        "baseline (PNG encode of the photo): {:.1} ms; face boxes: {:.1} ms; all landmarks (boxes, mesh, irises): {:.1} ms\n",
        ms(encode),
        ms(detect),
        ms(landmarks)
    );
    println!(
        "| procedure | warp/smooth (ms) | full preview: detect + warp + label + PNG (ms) | full / baseline |"
    );
    println!("|---|---|---|---|");
    for p in PROCEDURES {
        let warp = time(&mut || {
            std::hint::black_box(simulate(&photo, p, Intensity::Moderate, &lm).unwrap());
        });
        let full = time(&mut || {
            let lm = face::detect(&photo).expect("a face");
            let mut img = simulate(&photo, p, Intensity::Moderate, &lm).unwrap().image;
            render::label(&mut img, "SIMULATION");
            std::hint::black_box(encode_png(&img));
        });
        println!(
            "| {p} | {:.1} | {:.1} | {:.2}x |",
            ms(warp),
            ms(full),
            full.as_secs_f64() / encode.as_secs_f64()
        );
    }
}

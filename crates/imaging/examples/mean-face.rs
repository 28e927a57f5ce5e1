//! Writes `src/face/mean_face.rs`: the mean of Face Mesh's 468 points over the test portraits
//! and their mirror images, in the eye frame (origin between the eyes, unit = eye distance).
//! `cargo run --release -p afterview-imaging --example mean-face`
use afterview_imaging::face::{self, MESH_POINTS};
use afterview_imaging::intake::{Limits, decode_upright};

fn main() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut sum = vec![[0f64; 2]; MESH_POINTS];
    let mut n = 0.0;
    for file in ["astronaut.png", "grace_hopper.jpg"] {
        let bytes = std::fs::read(format!("{root}/testdata/portraits/{file}")).unwrap();
        let img = decode_upright(&bytes, &Limits::default()).unwrap().0;
        let lm = face::detect(&img).expect("a face");
        let f = lm.frame();
        let local: Vec<(f32, f32)> = lm.points.iter().map(|p| f.local(*p)).collect();
        let iod_mm = f.iod / f.px_per_mm;
        // The mirror image's point i is the point nearest to (-u, v).
        for (i, &(u, v)) in local.iter().enumerate() {
            let j = (0..MESH_POINTS)
                .min_by(|&a, &b| {
                    let da = (local[a].0 + u).powi(2) + (local[a].1 - v).powi(2);
                    let db = (local[b].0 + u).powi(2) + (local[b].1 - v).powi(2);
                    da.total_cmp(&db)
                })
                .unwrap();
            for (uu, vv) in [(u, v), (-local[j].0, local[j].1)] {
                sum[i][0] += f64::from(uu / iod_mm);
                sum[i][1] += f64::from(vv / iod_mm);
            }
        }
        n += 2.0;
    }
    let mut out = String::from(
        "// Written by `cargo run --release -p afterview-imaging --example mean-face`.\n[\n",
    );
    for s in &sum {
        out += &format!("    [{:.4}, {:.4}],\n", s[0] / n, s[1] / n);
    }
    out += "]\n";
    std::fs::write(
        format!("{}/src/face/mean_face.rs", env!("CARGO_MANIFEST_DIR")),
        out,
    )
    .unwrap();
    println!("wrote src/face/mean_face.rs");
}

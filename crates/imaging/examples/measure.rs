//! Prints what each procedure changes on photos, measured with the landmark model:
//! `cargo run --release -p afterview-imaging --example measure -- photo...`
use afterview_core::tasks::Intensity;
use afterview_imaging::intake::{Limits, decode_upright};
use afterview_imaging::procedures::PROCEDURES;
use afterview_imaging::{face, measure, simulate};

fn main() {
    for path in std::env::args().skip(1) {
        let img = decode_upright(&std::fs::read(&path).unwrap(), &Limits::default())
            .unwrap()
            .0;
        let lm = face::locate(&img, None).unwrap();
        println!("== {path} ({:.2} px/mm)", lm.frame().px_per_mm);
        for p in PROCEDURES {
            for i in [
                Intensity::Subtle,
                Intensity::Moderate,
                Intensity::Pronounced,
            ] {
                let out = match simulate(&img, p, i, &lm) {
                    Ok(o) => o.image,
                    Err(e) => {
                        println!("{p:18} {:10} {e}", i.as_str());
                        continue;
                    }
                };
                let mut line = format!(
                    "{p:18} {:10} others p90 {:.2} mm |",
                    i.as_str(),
                    measure::others_moved(p, &img, &out, &lm)
                );
                for c in measure::changes(p, &img, &out, &lm) {
                    line += &format!(
                        " {}: {:.2}->{:.2} ({:+.1}%, {:+.2})",
                        c.name,
                        c.before,
                        c.after,
                        c.relative() * 100.0,
                        c.delta()
                    );
                }
                if *p == "skin-resurfacing" {
                    let (b, a) = (
                        measure::texture_energy(&img, &lm),
                        measure::texture_energy(&out, &lm),
                    );
                    line += &format!(" texture {b:.1}->{a:.1} ({:+.1}%)", (a / b - 1.0) * 100.0);
                }
                if *p == "otoplasty" {
                    line += &format!(
                        " ears {:?} -> {:?}",
                        measure::ear_projection(&img, &lm),
                        measure::ear_projection(&out, &lm)
                    );
                }
                println!("{line}");
            }
        }
    }
}

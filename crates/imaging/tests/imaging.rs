//! The local engine, measured on real portraits as a surgeon would measure it: landmarks
//! against hand-placed points; each procedure's change at its clinical target (in millimetres
//! from the iris) on the test portraits and on rotated, mirrored and small-face copies; nothing
//! else on the face moving; hair, glasses, background and clothing untouched; determinism;
//! errors; and every intake limit.

use afterview_core::ErrorCode;
use afterview_core::tasks::{ControlPoints, Intensity};
use afterview_imaging::face::{self, Landmarks, Pt, Source, locate};
use afterview_imaging::intake::{self, Limits, decode_png, encode_png, intake};
use afterview_imaging::measure::{self, Change};
use afterview_imaging::procedures::PROCEDURES;
use afterview_imaging::register::{self, RegisterError, register};
use afterview_imaging::{ImagingError, face_window, preview, render, simulate};
use image::{Rgb, RgbImage};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/portraits");

fn portrait(name: &str) -> RgbImage {
    let bytes = std::fs::read(format!("{ROOT}/{name}")).unwrap();
    intake::decode_upright(&bytes, &Limits::default())
        .unwrap()
        .0
}

/// Rotated about the centre (bilinear, edges clamped), same size.
fn rotated(img: &RgbImage, degrees: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (s, c) = degrees.to_radians().sin_cos();
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - cx, y as f32 - cy);
        let sx = (cx + dx * c + dy * s).clamp(0.0, (w - 1) as f32);
        let sy = (cy - dx * s + dy * c).clamp(0.0, (h - 1) as f32);
        let (x0, y0) = (sx.floor() as u32, sy.floor() as u32);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
        let p = |xx, yy| img.get_pixel(xx, yy).0;
        Rgb([0, 1, 2].map(|i| {
            let top = p(x0, y0)[i] as f32 * (1.0 - fx) + p(x1, y0)[i] as f32 * fx;
            let bot = p(x0, y1)[i] as f32 * (1.0 - fx) + p(x1, y1)[i] as f32 * fx;
            (top * (1.0 - fy) + bot * fy + 0.5) as u8
        }))
    })
}

fn mirrored(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

/// The photo at half size in the middle of a canvas twice as wide and high: a face that takes
/// a quarter of the width it had.
fn small_face(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let half = image::imageops::resize(img, w / 2, h / 2, image::imageops::FilterType::Triangle);
    let mut canvas = RgbImage::from_pixel(w * 2, h * 2, Rgb([118, 128, 136]));
    image::imageops::replace(
        &mut canvas,
        &half,
        i64::from(w * 3 / 4),
        i64::from(h * 3 / 4),
    );
    canvas
}

/// The test portraits and their transformed copies.
fn variants() -> Vec<(&'static str, RgbImage)> {
    let hopper = portrait("grace_hopper.jpg");
    let astronaut = portrait("astronaut.png");
    vec![
        ("grace_hopper", hopper.clone()),
        ("grace_hopper +8°", rotated(&hopper, 8.0)),
        ("grace_hopper -8°", rotated(&hopper, -8.0)),
        ("grace_hopper mirrored", mirrored(&hopper)),
        ("grace_hopper small", small_face(&hopper)),
        ("astronaut", astronaut.clone()),
        ("astronaut mirrored", mirrored(&astronaut)),
    ]
}

fn find<'a>(changes: &'a [Change], name: &str) -> &'a Change {
    changes
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

fn check(ok: bool, failures: &mut Vec<String>, what: String) {
    if !ok {
        failures.push(what);
    }
}

// ---------------------------------------------------------------- landmarks

/// Points placed by hand on the originals (zoomed 24x on a pixel grid): iris centres, nose
/// tip (pronasale), mouth corners, menton. Tolerances in millimetres (iris scale); the nose
/// tip's is wide because a frontal view hardly shows where the tip is (the mesh puts it at
/// the lobule's lower edge, a hand at the highlight), and so are the mouth corners' on the
/// astronaut's smile (the lips' junction and the dark corridor beside the teeth meet there).
const HAND_PLACED: [(&str, [(f32, f32); 6]); 2] = [
    (
        "grace_hopper.jpg",
        [
            (222.5, 190.0),
            (304.5, 187.5),
            (267.0, 240.0),
            (229.0, 278.0),
            (307.0, 275.0),
            (270.0, 330.0),
        ],
    ),
    (
        "astronaut.png",
        [
            (203.0, 100.5),
            (246.0, 102.5),
            (223.0, 124.5),
            (203.5, 140.5),
            (246.0, 140.0),
            (220.5, 177.0),
        ],
    ),
];

#[test]
fn landmarks_match_hand_placed_points() {
    let tolerance_mm = [1.0, 1.0, 7.0, 7.5, 7.5, 4.0];
    let names = [
        "right iris",
        "left iris",
        "nose tip",
        "right mouth corner",
        "left mouth corner",
        "menton",
    ];
    for (file, points) in HAND_PLACED {
        let img = portrait(file);
        let lm = face::detect(&img).expect("a face");
        assert_eq!(lm.source, Source::Detected);
        assert!(lm.irises_measured);
        let f = lm.frame();
        let found = [
            lm.right_eye(),
            lm.left_eye(),
            lm.nose_tip(),
            lm.points[61],
            lm.points[291],
            lm.chin(),
        ];
        for k in 0..6 {
            let err = found[k].minus(Pt::new(points[k].0, points[k].1)).len() / f.px_per_mm;
            assert!(
                err <= tolerance_mm[k],
                "{file} {}: {err:.2} mm off",
                names[k]
            );
        }
        // The iris gives a plausible adult scale: 55-75 mm between the pupils.
        let ipd = f.iod / f.px_per_mm;
        assert!(
            (55.0..75.0).contains(&ipd),
            "{file}: {ipd:.1} mm between the pupils"
        );
    }
}

#[test]
fn landmarks_follow_rotation_mirroring_and_size() {
    let hopper = portrait("grace_hopper.jpg");
    let base = face::detect(&hopper).unwrap();
    let bf = base.frame();
    let shape = |lm: &Landmarks| -> Vec<(f32, f32)> {
        let f = lm.frame();
        [1usize, 61, 291, 152, 129, 358, 0, 17]
            .iter()
            .map(|&i| {
                let (u, v) = f.local(lm.points[i]);
                (u, v)
            })
            .collect()
    };
    let reference = shape(&base);
    // A rotated face keeps its shape within 2.5 mm; a face of a quarter the width (38 px
    // between the eyes) within 6 mm.
    for (name, img, tol) in [
        ("+8°", rotated(&hopper, 8.0), 2.5),
        ("-8°", rotated(&hopper, -8.0), 2.5),
        ("small", small_face(&hopper), 6.0),
    ] {
        let lm = face::detect(&img).unwrap_or_else(|| panic!("{name}: no face"));
        let f = lm.frame();
        // The same face: its shape in the face frame (mm) within 1.5 mm, its scale within 8 %.
        for (a, b) in shape(&lm).iter().zip(&reference) {
            let d = ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
            assert!(
                d < tol,
                "{name}: a landmark moved {d:.2} mm in the face frame"
            );
        }
        let ratio = (f.iod / f.px_per_mm) / (bf.iod / bf.px_per_mm);
        assert!(
            (0.92..1.08).contains(&ratio),
            "{name}: eye distance in mm changed by {ratio}"
        );
        let angle = f.ex.y.atan2(f.ex.x).to_degrees() - bf.ex.y.atan2(bf.ex.x).to_degrees();
        if name != "small" {
            let want = if name == "+8°" { 8.0 } else { -8.0 };
            assert!(
                (angle - want).abs() < 1.5,
                "{name}: frame turned {angle:.1}°"
            );
        }
    }
    // Mirrored: the subject's right iris is now on the image's left again.
    let m = face::detect(&mirrored(&hopper)).unwrap();
    let w = hopper.width() as f32;
    let d = m
        .right_eye()
        .minus(Pt::new(w - 1.0 - base.left_eye().x, base.left_eye().y))
        .len();
    assert!(d / bf.px_per_mm < 1.0, "mirrored iris {d:.1} px off");
}

#[test]
fn no_face_no_preview_and_control_points_place_the_face() {
    let coffee = portrait("no_face_coffee.png");
    assert!(face::detect(&coffee).is_none());
    let err = preview(&coffee, "rhinoplasty", Intensity::Moderate, None).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NoFaceDetected);
    // Control points on a real face: Face Mesh on the crop they place.
    let astro = portrait("astronaut.png");
    let d = face::detect(&astro).unwrap();
    let cp = ControlPoints {
        right_eye: [d.right_eye().x, d.right_eye().y],
        left_eye: [d.left_eye().x, d.left_eye().y],
        nose_tip: [d.nose_tip().x, d.nose_tip().y],
        mouth_right: [d.points[61].x, d.points[61].y],
        mouth_left: [d.points[291].x, d.points[291].y],
        chin: None,
    };
    let lm = locate(&astro, Some(&cp)).unwrap();
    assert_eq!(lm.source, Source::ControlPoints);
    assert!(lm.chin().minus(d.chin()).len() < 3.0);
    // On a photo without a face, the mean face is fitted to them.
    let cp = ControlPoints {
        right_eye: [250.0, 150.0],
        left_eye: [350.0, 150.0],
        nose_tip: [300.0, 220.0],
        mouth_right: [260.0, 280.0],
        mouth_left: [340.0, 280.0],
        chin: None,
    };
    let lm = locate(&coffee, Some(&cp)).unwrap();
    assert_eq!(lm.source, Source::Template);
    assert!(
        lm.chin().y > 300.0 && (lm.chin().x - 300.0).abs() < 10.0,
        "{:?}",
        lm.chin()
    );
    assert!(simulate(&coffee, "lip-augmentation", Intensity::Moderate, &lm).is_ok());
    // Bad control points.
    let mut bad = cp;
    bad.nose_tip = [300.0, 900.0];
    assert_eq!(
        preview(&coffee, "rhinoplasty", Intensity::Moderate, Some(&bad))
            .unwrap_err()
            .code(),
        ErrorCode::InvalidControlPoints
    );
    let mut bad = cp;
    (bad.left_eye, bad.right_eye) = (bad.right_eye, bad.left_eye);
    assert_eq!(
        preview(&coffee, "rhinoplasty", Intensity::Moderate, Some(&bad))
            .unwrap_err()
            .code(),
        ErrorCode::InvalidControlPoints
    );
    let mut bad = cp;
    bad.mouth_left = [340.0, 100.0];
    bad.mouth_right = [260.0, 100.0];
    assert!(preview(&coffee, "rhinoplasty", Intensity::Moderate, Some(&bad)).is_err());
    assert!(matches!(
        preview(&astro, "liposuction", Intensity::Moderate, None),
        Err(ImagingError::UnknownProcedure(_))
    ));
}

// ---------------------------------------------------------------- procedures

/// Every procedure at `moderate` on every variant, against its clinical target (see
/// `docs/previews.md`), measured by [`measure::changes`]. All failures are reported at once.
#[test]
fn each_procedure_hits_its_target_on_every_variant() {
    let mut failures = vec![];
    for (name, img) in variants() {
        let lm = face::detect(&img).unwrap_or_else(|| panic!("{name}: no face"));
        let glasses = name.starts_with("grace");
        // Below 0.8 px/mm a millimetre is under a pixel and the flow resolves only part of it:
        // the lower bounds of the amounts are a third there.
        let small = lm.frame().px_per_mm < 0.8;
        let low = if small { 0.35 } else { 1.0 };
        for p in PROCEDURES {
            if *p == "otoplasty" && !name.starts_with("grace") {
                continue; // the astronaut's ears are under her hair: see the next test
            }
            let out = simulate(&img, p, Intensity::Moderate, &lm)
                .unwrap_or_else(|e| panic!("{name} {p}: {e}"))
                .image;
            let c = measure::changes(p, &img, &out, &lm);
            let tag = |what: &str| format!("{name} {p}: {what}");
            let others = measure::others_moved(p, &img, &out, &lm);
            check(
                others <= 0.5,
                &mut failures,
                tag(&format!("other points moved {others:.2} mm (p90)")),
            );
            match *p {
                "rhinoplasty" => {
                    let w = find(&c, "alar base (64-294)").relative();
                    check(
                        (-0.12..=-0.045).contains(&w),
                        &mut failures,
                        tag(&format!("alar base {:+.1} %", w * 100.0)),
                    );
                    let tip = find(&c, "tip u").delta().abs();
                    check(
                        tip < 0.5,
                        &mut failures,
                        tag(&format!("tip moved sideways {tip:.2} mm")),
                    );
                }
                "lip-augmentation" => {
                    let up = find(&c, "upper lip height").relative();
                    let lo = find(&c, "lower lip height").relative();
                    check(
                        (0.06..=0.45).contains(&up),
                        &mut failures,
                        tag(&format!("upper lip {:+.1} %", up * 100.0)),
                    );
                    check(
                        (0.06..=0.35).contains(&lo),
                        &mut failures,
                        tag(&format!("lower lip {:+.1} %", lo * 100.0)),
                    );
                    let mw = find(&c, "mouth width").relative().abs();
                    check(
                        mw < 0.04,
                        &mut failures,
                        tag(&format!("mouth width {:.1} %", mw * 100.0)),
                    );
                    let gap = find(&c, "lip gap").delta().abs();
                    check(
                        gap < 0.6,
                        &mut failures,
                        tag(&format!("mouth opened {gap:.2} mm")),
                    );
                }
                "chin-augmentation" => {
                    let down = find(&c, "menton v").delta();
                    check(
                        (1.2 * low..=4.5).contains(&down),
                        &mut failures,
                        tag(&format!("menton down {down:.2} mm")),
                    );
                    let side = find(&c, "menton u").delta().abs();
                    check(
                        side < 0.6,
                        &mut failures,
                        tag(&format!("menton sideways {side:.2} mm")),
                    );
                    // The lower border comes down with the menton, a broad curve: the chin
                    // does not come to a point (it did at 35 % of the menton's drop).
                    for s in ["right", "left"] {
                        // Halfway to those points too: no point under the menton between them.
                        let near = find(&c, &format!("{s} chin border near v")).delta();
                        check(
                            small || near >= 0.75 * down,
                            &mut failures,
                            tag(&format!(
                                "{s} chin border near the menton down {near:.2} mm, menton {down:.2} mm"
                            )),
                        );
                        let border = find(&c, &format!("{s} chin border v")).delta();
                        check(
                            small || border >= 0.5 * down,
                            &mut failures,
                            tag(&format!(
                                "{s} chin border down {border:.2} mm, menton {down:.2} mm"
                            )),
                        );
                    }
                }
                "brow-lift" => {
                    for s in ["right", "left"] {
                        let mid = -find(&c, &format!("{s} brow middle v")).delta();
                        // On a small Grace Hopper the frames cover most of the brows.
                        if !(glasses && small) {
                            check(
                                (0.5 * low..=4.0).contains(&mid),
                                &mut failures,
                                tag(&format!("{s} brow middle up {mid:.2} mm")),
                            );
                        }
                        // The whole brow rises: its lower edge as far as its top (a thick
                        // brow whose lower half stayed came out taller, not lifted).
                        // (Not measurable behind Grace Hopper's frames, which stay.)
                        let lower = -find(&c, &format!("{s} brow lower middle v")).delta();
                        check(
                            glasses || lower >= 0.75 * mid,
                            &mut failures,
                            tag(&format!(
                                "{s} brow lower edge up {lower:.2}, top {mid:.2} mm"
                            )),
                        );
                        // Grace Hopper's brow tails are behind her glasses' frames, which stay.
                        if !glasses {
                            let tail = -find(&c, &format!("{s} brow tail v")).delta();
                            check(
                                (1.8 * low..=4.5).contains(&tail),
                                &mut failures,
                                tag(&format!("{s} tail up {tail:.2} mm")),
                            );
                            check(
                                tail + 0.3 >= mid,
                                &mut failures,
                                tag(&format!("{s} tail {tail:.2} below the middle {mid:.2}")),
                            );
                        }
                        let lid = find(&c, &format!("{s} lid margin v")).delta().abs();
                        check(
                            lid < 0.5,
                            &mut failures,
                            tag(&format!("{s} lid margin moved {lid:.2} mm")),
                        );
                    }
                }
                "blepharoplasty" => {
                    for s in ["right", "left"] {
                        let platform = find(&c, &format!("{s} lid platform")).delta();
                        check(
                            platform >= 0.15 * low,
                            &mut failures,
                            tag(&format!("{s} lid platform {platform:+.2} mm")),
                        );
                        let lid = find(&c, &format!("{s} lid margin v")).delta().abs();
                        check(
                            lid < 0.5,
                            &mut failures,
                            tag(&format!("{s} lid margin moved {lid:.2} mm")),
                        );
                        // The lower lid's part: under-eye bags and hollows evened out, their
                        // creases softened, the skin's fine texture there not erased.
                        let shading = -find(&c, &format!("{s} under-eye shading")).relative();
                        check(
                            (0.15 * low..=0.8).contains(&shading),
                            &mut failures,
                            tag(&format!(
                                "{s} under-eye shading {:.0} % less",
                                shading * 100.0
                            )),
                        );
                        let texture = find(&c, &format!("{s} under-eye texture")).relative();
                        check(
                            (-0.55..=0.1).contains(&texture),
                            &mut failures,
                            tag(&format!("{s} under-eye texture {:+.0} %", texture * 100.0)),
                        );
                    }
                }
                "facelift" => {
                    let r = -find(&c, "right jowl v").delta();
                    let l = -find(&c, "left jowl v").delta();
                    check(
                        (r + l) / 2.0 >= 1.8 * low && r.min(l) >= 0.8 * low,
                        &mut failures,
                        tag(&format!("jowls up {r:.2} / {l:.2} mm")),
                    );
                    let jaw = find(&c, "jaw width (172-397)").relative();
                    check(
                        jaw < 0.02,
                        &mut failures,
                        tag(&format!("jaw widened {:+.1} %", jaw * 100.0)),
                    );
                    let cheeks = find(&c, "cheek width (234-454)").relative();
                    check(
                        cheeks.abs() < 0.01,
                        &mut failures,
                        tag(&format!("cheeks {:+.1} %", cheeks * 100.0)),
                    );
                }
                "otoplasty" => {
                    let before = measure::ear_projection(&img, &lm);
                    let after = measure::ear_projection(&out, &lm);
                    let moved: Vec<f32> = before
                        .iter()
                        .zip(&after)
                        .filter_map(|(b, a)| Some(b.as_ref()? - a.as_ref()?))
                        .collect();
                    check(
                        !moved.is_empty() && moved.iter().all(|&d| d >= 0.6),
                        &mut failures,
                        tag(&format!("ears set back {moved:?} mm")),
                    );
                }
                "skin-resurfacing" => {
                    let (b, a) = (
                        measure::texture_energy(&img, &lm),
                        measure::texture_energy(&out, &lm),
                    );
                    let cut = 1.0 - a / b;
                    check(
                        (0.28..=0.55).contains(&cut),
                        &mut failures,
                        tag(&format!("fine texture {:.0} % less", cut * 100.0)),
                    );
                    // Fine lines, 1-3 mm wide: 30-50 % fewer after laser resurfacing.
                    let (b, a) = (
                        measure::wrinkle_energy(&img, &lm),
                        measure::wrinkle_energy(&out, &lm),
                    );
                    let lines = 1.0 - a / b;
                    check(
                        (0.28..=0.6).contains(&lines),
                        &mut failures,
                        tag(&format!("fine lines {:.0} % less", lines * 100.0)),
                    );
                }
                other => panic!("no target for {other}"),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} misses:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn intensity_orders_the_amount_of_change() {
    let img = portrait("grace_hopper.jpg");
    let lm = face::detect(&img).unwrap();
    let amount = |p: &str, i: Intensity| {
        let out = simulate(&img, p, i, &lm).unwrap().image;
        let c = measure::changes(p, &img, &out, &lm);
        match p {
            "rhinoplasty" => -find(&c, "alar base (64-294)").relative(),
            "chin-augmentation" => find(&c, "menton v").delta(),
            _ => -find(&c, "right jowl v").delta() - find(&c, "left jowl v").delta(),
        }
    };
    for p in ["rhinoplasty", "chin-augmentation", "facelift"] {
        let [s, m, x] = [
            Intensity::Subtle,
            Intensity::Moderate,
            Intensity::Pronounced,
        ]
        .map(|i| amount(p, i));
        assert!(s < m && m < x, "{p}: {s:.3} < {m:.3} < {x:.3}");
        assert!(
            s > 0.25 * m && s < 0.75 * m,
            "{p}: subtle is about half of moderate ({s:.3} vs {m:.3})"
        );
    }
}

#[test]
fn otoplasty_fails_cleanly_when_the_ears_are_hidden() {
    // Grace Hopper with both ear regions painted over in the background's colour.
    let mut img = portrait("grace_hopper.jpg");
    let lm = face::detect(&img).unwrap();
    let f = lm.frame();
    let roots = [f.local(lm.points[234]).0, f.local(lm.points[454]).0];
    let (w, h) = img.dimensions();
    for y in 0..h {
        for x in 0..w {
            let (u, v) = f.local(Pt::new(x as f32, y as f32));
            let beside = u <= roots[0] + 1.0 || u >= roots[1] - 1.0;
            if beside && (-30.0..=70.0).contains(&v) {
                img.put_pixel(x, y, Rgb([70, 110, 190]));
            }
        }
    }
    let err = simulate(&img, "otoplasty", Intensity::Moderate, &lm).unwrap_err();
    assert_eq!(err.code(), ErrorCode::FeatureNotVisible);
    assert_eq!(err.code().as_str(), "feature_not_visible");
}

#[test]
fn hair_glasses_background_and_clothing_never_move() {
    let img = portrait("grace_hopper.jpg");
    let lm = face::detect(&img).unwrap();
    let f = lm.frame();
    let (_, v_chin) = f.local(lm.chin());
    for p in PROCEDURES {
        let out = simulate(&img, p, Intensity::Pronounced, &lm).unwrap().image;
        // Below the neck (the collar and the jacket) and the flag behind: untouched.
        for (x, y, px) in out.enumerate_pixels() {
            let (_, v) = f.local(Pt::new(x as f32, y as f32));
            if v > v_chin + 32.0 || x < 110 {
                assert_eq!(px, img.get_pixel(x, y), "{p}: ({x}, {y}) changed");
            }
        }
        // The glasses' dark frames stay where they are (brow lift and blepharoplasty move the
        // skin behind them).
        // Frame pixels: near-black ones in a horizontal run of near-black (a rim), above the
        // eyes.
        let black = |x: u32, y: u32| {
            let a = img.get_pixel(x, y).0;
            (a[0] as u32 + a[1] as u32 + a[2] as u32) < 120
        };
        let (mut dark, mut moved) = (0, 0);
        for y in 140..230 {
            for x in 176..364 {
                let rim = (x - 6..=x + 6).filter(|&xx| black(xx, y)).count() >= 12;
                if rim && f.local(Pt::new(x as f32, y as f32)).1 < -5.0 {
                    dark += 1;
                    let (a, b) = (img.get_pixel(x, y).0, out.get_pixel(x, y).0);
                    if (0..3).any(|c| a[c].abs_diff(b[c]) > 12) {
                        moved += 1;
                    }
                }
            }
        }
        assert!(dark > 200, "the frames are found ({dark})");
        assert!(
            moved * 50 <= dark,
            "{p}: {moved} of {dark} frame pixels changed"
        );
    }
}

/// A blepharoplasty does not push the brow's lower edge up: the hooding rose as far as its
/// amount said, into the brow where the brow is close to the lid (the astronaut's), and the
/// brow's lower hairs went up with it, a notch under each brow at `pronounced` (1.06 mm).
#[test]
fn a_blepharoplasty_leaves_the_brows_lower_edge() {
    let img = portrait("astronaut.png");
    let lm = face::detect(&img).unwrap();
    let out = simulate(&img, "blepharoplasty", Intensity::Pronounced, &lm)
        .unwrap()
        .image;
    let c = measure::changes("blepharoplasty", &img, &out, &lm);
    for side in ["right", "left"] {
        let rise = find(&c, &format!("{side} brow lower rise")).delta();
        assert!(rise < 0.8, "{side} brow's lower edge rose {rise:.2} mm");
    }
    let platform = find(&c, "right lid platform").delta();
    assert!(
        platform > 0.15,
        "the lid platform grew only {platform:.2} mm"
    );
}

/// An empty mask over the whole of `img`.
fn whole_mask(img: &RgbImage) -> afterview_imaging::warp::Mask {
    let (x1, y1) = img.dimensions();
    afterview_imaging::warp::Mask::new(afterview_imaging::warp::Rect {
        x0: 0,
        y0: 0,
        x1,
        y1,
    })
}

/// A thick brow rises as one: with its lower outline 3 mm further down than the astronaut's own
/// (a full brow), its lower edge moves up as far as its top. The lift was ramped from 3 mm
/// under the brow's upper line whatever its thickness, so a thick brow's lower half stayed and
/// the brow came out taller, not lifted (seen on dark, full brows).
#[test]
fn a_brow_lift_raises_a_thick_brow_whole() {
    let img = portrait("astronaut.png");
    let mut lm = face::detect(&img).unwrap();
    let f = lm.frame();
    for side in 0..2 {
        for &i in &face::regions::BROW_LOWER[side] {
            lm.points[i] = lm.points[i].plus(f.vec(0.0, 3.0));
        }
    }
    let plan =
        afterview_imaging::procedures::plan("brow-lift", &img, &lm, Intensity::Moderate).unwrap();
    let rise = |i: usize| {
        let h = plan.handles.iter().find(|h| h.at == lm.points[i]).unwrap();
        -f.local_vec(h.shift).1
    };
    for (top, low) in [(105, 52), (334, 282)] {
        let (t, l) = (rise(top), rise(low));
        assert!(t > 0.5, "the brow's top rose {t:.2} mm");
        assert!(l >= 0.9 * t, "lower edge up {l:.2} mm, top {t:.2} mm");
    }
}

/// Black, full brow hair is not a frame: with the astronaut's brows painted near-black and
/// full (the mesh's outline and 2.5 mm of hair below it, as on dark, full brows, where the
/// outline sits on the brow's upper half), a brow lift still moves them whole. Near-black
/// pixels were kept rigid as frames, and the hair outside the brow's region as an overlay, so
/// the brow's lower half stayed while the skin round it rose. Under the painted brows' lower
/// edge skin shows after the lift.
#[test]
fn a_brow_lift_moves_black_brows() {
    let mut img = portrait("astronaut.png");
    let lm = face::detect(&img).unwrap();
    let f = lm.frame();
    let mut painted = whole_mask(&img);
    for side in 0..2 {
        let mut brow = lm.group(&face::regions::BROW_UPPER[side]);
        let lower = lm.group(&face::regions::BROW_LOWER[side]);
        brow.extend(lower.iter().rev().map(|p| p.plus(f.vec(0.0, 2.5))));
        painted.fill_polygon(&brow, 1.0);
    }
    for (x, y, p) in img.enumerate_pixels_mut() {
        if painted.at(x, y) >= 0.5 {
            *p = Rgb([22, 19, 18]);
        }
    }
    let out = simulate(&img, "brow-lift", Intensity::Pronounced, &lm)
        .unwrap()
        .image;
    // The painted pixels within 0.6 mm of the paint's lower edge, towards the brows' tails
    // (the lift is largest there): how many turned light.
    let px = (0.6 * f.px_per_mm).ceil() as u32;
    let (mut edge, mut light) = (0, 0);
    for (x, y, p) in out.enumerate_pixels() {
        let below = (1..=px).any(|d| painted.at(x, y + d) < 0.5);
        let (u, _) = f.local(Pt::new(x as f32, y as f32));
        if painted.at(x, y) >= 0.5 && below && u.abs() > 25.0 {
            edge += 1;
            light += usize::from(p.0.iter().map(|&c| u32::from(c)).sum::<u32>() > 3 * 80);
        }
    }
    assert!(edge > 20, "{edge} edge pixels");
    assert!(
        light * 2 >= edge,
        "only {light} of the black brows' {edge} lower-edge pixels show skin after the lift"
    );
}

/// Grace Hopper, her landmarks, and the mask of her lips (inside their outer outline).
fn grace_and_her_lips() -> (RgbImage, Landmarks, afterview_imaging::warp::Mask) {
    let img = portrait("grace_hopper.jpg");
    let lm = face::detect(&img).unwrap();
    let mut lips = whole_mask(&img);
    let mut outline = lm.group(&face::regions::UPPER_LIP_OUTER);
    outline.extend(lm.group(&face::regions::LOWER_LIP_OUTER).into_iter().rev());
    lips.fill_polygon(&outline, 1.0);
    (img, lm, lips)
}

/// An open mouth's teeth stay put in a lip augmentation. On a smile or an open mouth the
/// mesh's inner lip points often lie on the teeth, and the lips' stretch from there drew the
/// teeth into a sawtooth and the lower incisors into the lip. Here Grace Hopper's lips are
/// painted as an open mouth whose teeth reach 3 mm beyond the mesh's inner lines: few of the
/// teeth may appear or go (at most a tenth of them; 21 % appeared on the old recipe).
#[test]
fn a_lip_augmentation_leaves_the_teeth() {
    let (mut img, lm, lips) = grace_and_her_lips();
    let f = lm.frame();
    let mut teeth = whole_mask(&img);
    for (line, dir) in [
        (&face::regions::UPPER_LIP_INNER, -1.0),
        (&face::regions::LOWER_LIP_INNER, 1.0),
    ] {
        let inner = lm.group(line);
        let mut strip = inner.clone();
        strip.extend(inner.iter().rev().map(|p| p.plus(f.vec(0.0, 3.0 * dir))));
        teeth.fill_polygon(&strip, 1.0);
    }
    for (x, y, p) in img.enumerate_pixels_mut() {
        if teeth.at(x, y) >= 0.5 {
            *p = Rgb([236, 234, 226]);
        } else if lips.at(x, y) >= 0.5 {
            *p = Rgb([168, 84, 88]);
        }
    }
    let out = simulate(&img, "lip-augmentation", Intensity::Pronounced, &lm)
        .unwrap()
        .image;
    // Teeth where there were none (the teeth stretched into the lip), and teeth gone.
    let white = |p: [u8; 3]| {
        p.iter()
            .zip([236u8, 234, 226])
            .all(|(&a, b)| a.abs_diff(b) < 30)
    };
    let (mut n, mut grown, mut gone) = (0, 0, 0);
    for (x, y, p) in img.enumerate_pixels() {
        let was = teeth.at(x, y) >= 0.5;
        n += usize::from(was);
        let now = white(out.get_pixel(x, y).0);
        grown += usize::from(now && !white(p.0));
        gone += usize::from(was && !now);
    }
    assert!(n > 200, "{n} teeth pixels");
    assert!(
        grown * 10 <= n && gone * 10 <= n,
        "of {n} teeth pixels, {grown} more and {gone} fewer after the lips' stretch"
    );
}

/// A smile's gums are not the lip: a lip augmentation stretches the upper lip from above them
/// (counted as lip, they were stretched with it into a gummy smile). Grace Hopper's lips are
/// painted dark, as a smile whose upper teeth reach 3 mm above the mesh's inner line under
/// 2.5 mm of pink gum: each upper column tall enough starts above the gum.
#[test]
fn a_lip_augmentation_leaves_the_gums() {
    let (mut img, lm, lips) = grace_and_her_lips();
    let f = lm.frame();
    let inner = lm.group(&face::regions::UPPER_LIP_INNER);
    let strip = |from: f32, to: f32| {
        let mut m = whole_mask(&img);
        let mut poly: Vec<Pt> = inner.iter().map(|p| p.plus(f.vec(0.0, -from))).collect();
        poly.extend(inner.iter().rev().map(|p| p.plus(f.vec(0.0, -to))));
        m.fill_polygon(&poly, 1.0);
        m
    };
    let (teeth, gum) = (strip(0.0, 3.0), strip(3.0, 5.5));
    const GUM: [u8; 3] = [232, 112, 176];
    for (x, y, p) in img.enumerate_pixels_mut() {
        if teeth.at(x, y) >= 0.5 {
            *p = Rgb([236, 234, 226]);
        } else if gum.at(x, y) >= 0.5 {
            *p = Rgb(GUM);
        } else if lips.at(x, y) >= 0.5 {
            *p = Rgb([110, 60, 55]);
        }
    }
    // Each upper column that reaches past the gum starts above it.
    let seen = afterview_imaging::procedures::lip_bands_seen(&img, &lm);
    let mut starts = vec![];
    for band in seen.iter().filter(|b| b.dir < 0.0) {
        let mesh_inner = f.local(lm.points[band.inner_index]).1;
        let whole = mesh_inner - f.local(lm.points[band.outer_index]).1;
        if whole >= 6.5 {
            starts.push(mesh_inner - f.local(band.inner).1);
        }
    }
    assert!(starts.len() >= 2, "{starts:?}");
    assert!(
        starts.iter().all(|&mm| mm >= 5.0),
        "upper lip columns start on the gum (mm above the mesh's inner line): {starts:.1?}"
    );
}

/// The warp field `procedure`'s recipe fits at `pronounced` for the face at `lm`.
fn pronounced_warp(
    procedure: &str,
    img: &RgbImage,
    lm: &Landmarks,
) -> afterview_imaging::warp::Field {
    let plan =
        afterview_imaging::procedures::plan(procedure, img, lm, Intensity::Pronounced).unwrap();
    afterview_imaging::warp::Field::fit(&plan.handles, lm.frame().px(plan.radius_mm))
}

/// A lip's border moves as one curve, not a scallop per column: held only at the recipe's
/// columns (a mesh point every 4-6 mm), the border sagged between them, bumps along the upper
/// lip and a notch in the lower at `pronounced`. Here the warp's shift halfway between two
/// columns of Grace Hopper's lips is at least 85 % of the smaller of theirs.
#[test]
fn a_lip_augmentation_moves_the_border_as_one_curve() {
    let img = portrait("grace_hopper.jpg");
    let lm = face::detect(&img).unwrap();
    let f = lm.frame();
    let field = pronounced_warp("lip-augmentation", &img, &lm);
    let shift = |p: Pt| f.local_vec(field.at(p)).1.abs();
    for border in [
        &face::regions::UPPER_LIP_OUTER,
        &face::regions::LOWER_LIP_OUTER,
    ] {
        let pts = lm.group(border);
        for pair in pts[2..pts.len() - 2].windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let mid = Pt::new(0.5 * (a.x + b.x), 0.5 * (a.y + b.y));
            let (sa, sb, sm) = (shift(a), shift(b), shift(mid));
            assert!(
                sm >= 0.85 * sa.min(sb),
                "the border sags between two columns: {sa:.2} and {sb:.2} mm, {sm:.2} between"
            );
        }
    }
}

/// On Grace Hopper tilted 8°, her frames' upper edge (lighter than near-black where the rotation
/// blurred it) meets the brows' tails, inside their regions: lifted with the brow, it smeared a
/// grey patch onto the forehead above each tail (14-17 mm above the eyes, 50-57 mm out; the
/// brows themselves, darker and lifted, darken the skin above them further in and higher up).
#[test]
fn a_brow_lift_leaves_no_piece_of_the_frames_on_the_forehead() {
    let img = rotated(&portrait("grace_hopper.jpg"), 8.0);
    let lm = face::detect(&img).unwrap();
    let f = lm.frame();
    let out = simulate(&img, "brow-lift", Intensity::Pronounced, &lm)
        .unwrap()
        .image;
    let lum =
        |p: [u8; 3]| 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
    let mut darker = vec![];
    for (x, y, p) in out.enumerate_pixels() {
        let (u, v) = f.local(Pt::new(x as f32, y as f32));
        let drop = lum(img.get_pixel(x, y).0) - lum(p.0);
        if u.abs() > 50.0 && (-19.0..-14.0).contains(&v) && drop > 40.0 {
            darker.push((x, y, drop as i32));
        }
    }
    assert!(
        darker.is_empty(),
        "darkened above the frames' ends: {darker:?}"
    );
}

#[test]
fn previews_are_deterministic_and_local() {
    let photo = portrait("grace_hopper.jpg");
    for p in PROCEDURES {
        let (one, _) = preview(&photo, p, Intensity::Pronounced, None).unwrap();
        let (two, _) = preview(&photo, p, Intensity::Pronounced, None).unwrap();
        assert_eq!(
            encode_png(&one.image),
            encode_png(&two.image),
            "{p}: byte-identical"
        );
        assert_ne!(one.image, photo, "{p} changes something");
        let outside = one
            .image
            .enumerate_pixels()
            .filter(|(x, y, px)| !one.region.contains(*x, *y) && *px != photo.get_pixel(*x, *y))
            .count();
        assert_eq!(
            outside, 0,
            "{p}: zero pixel difference outside {:?}",
            one.region
        );
        let area = one.region.width() * one.region.height();
        assert!(
            area < photo.width() * photo.height() / 3,
            "{p}: the treated region is a small part of the photo"
        );
    }
}

#[test]
fn the_face_window_frames_the_face() {
    for img in [
        portrait("astronaut.png"),
        small_face(&portrait("grace_hopper.jpg")),
    ] {
        let lm = face::detect(&img).unwrap();
        let r = face_window(&lm, img.width(), img.height(), 0.62, 0.8);
        let f = lm.frame();
        let oval: Vec<f32> = afterview_imaging::face::regions::FACE_OVAL
            .iter()
            .map(|&i| f.local(lm.points[i]).0)
            .collect();
        let face_w = f.px(oval.iter().cloned().fold(f32::MIN, f32::max)
            - oval.iter().cloned().fold(f32::MAX, f32::min));
        assert!(
            face_w >= 0.4 * r.width() as f32,
            "face {face_w:.0} px in a {} px window",
            r.width()
        );
        assert!(r.contains(lm.chin().x as u32, lm.chin().y as u32 - 1));
        assert!(r.contains(lm.points[10].x as u32, lm.points[10].y as u32));
    }
}

#[test]
fn treatment_masks_cover_the_change_and_nothing_far_away() {
    let img = portrait("grace_hopper.jpg");
    let lm = face::detect(&img).unwrap();
    for p in PROCEDURES {
        let mask = afterview_imaging::treatment_mask(&img, p, Intensity::Moderate, &lm).unwrap();
        let out = simulate(&img, p, Intensity::Moderate, &lm).unwrap().image;
        let w = img.width();
        let (mut changed, mut covered) = (0, 0);
        for (x, y, px) in out.enumerate_pixels() {
            let a = img.get_pixel(x, y).0;
            if (0..3).any(|c| a[c].abs_diff(px.0[c]) > 6) {
                changed += 1;
                if mask[(y * w + x) as usize] > 0.3 {
                    covered += 1;
                }
            }
        }
        assert!(
            covered * 10 >= changed * 9,
            "{p}: the mask covers {covered} of {changed} changed pixels"
        );
        let masked = mask.iter().filter(|&&m| m > 0.0).count();
        assert!(
            masked < mask.len() / 3,
            "{p}: the mask is local ({masked} pixels)"
        );
    }
}

#[test]
fn the_bundled_models_are_the_converted_ones() {
    let sums =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/SHA256SUMS")).unwrap();
    for (name, bytes) in [
        ("face_detection_back.onnx", face::DETECTOR_ONNX),
        ("face_landmark.onnx", face::MESH_ONNX),
        ("iris_landmark.onnx", face::IRIS_ONNX),
    ] {
        let line = sums
            .lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("{name} listed"));
        let want = line.split_whitespace().next().unwrap();
        assert_eq!(sha256_hex(bytes), want, "{name}");
    }
}

/// SHA-256 (FIPS 180-4), for the checksum test.
fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn the_label_only_touches_its_corner() {
    let photo = portrait("astronaut.png");
    let mut labelled = photo.clone();
    let r = render::label(&mut labelled, "SIMULATION");
    assert!(r.x0 > 300 && r.y0 > 440, "{r:?}");
    let changed: Vec<(u32, u32)> = labelled
        .enumerate_pixels()
        .filter(|(x, y, p)| *p != photo.get_pixel(*x, *y))
        .map(|(x, y, _)| (x, y))
        .collect();
    assert!(changed.len() > 500);
    assert!(changed.iter().all(|(x, y)| r.contains(*x, *y)));
    let bright = changed
        .iter()
        .filter(|(x, y)| labelled.get_pixel(*x, *y).0.iter().all(|c| *c > 200))
        .count();
    assert!(bright > 50, "white text is drawn");
}

#[test]
fn composites_put_panels_side_by_side() {
    let a = RgbImage::from_pixel(200, 100, Rgb([255, 0, 0]));
    let b = RgbImage::from_pixel(100, 100, Rgb([0, 0, 255]));
    let c = render::compose(&[("Original", &a), ("Rhinoplasty", &b)], 200);
    assert!(c.width() >= 600 && c.width() < 640, "{}", c.width());
    assert!(c.height() > 200);
    assert_eq!(c.get_pixel(100, 100).0, [255, 0, 0]);
    assert_eq!(c.get_pixel(c.width() - 100, 100).0, [0, 0, 255]);
}

// ---------------------------------------------------------------- intake

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 4) as u8, (y * 4) as u8, 128]));
    let mut out = vec![];
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .unwrap();
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid 1×1 PNG whose header then claims `w × h` (a decompression bomb's header).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut png = encode_png(&RgbImage::new(1, 1));
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// Inserts an EXIF APP1 segment with the given orientation after the JPEG's SOI.
fn with_exif_orientation(jpg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpg[2..]);
    out
}

fn png_chunks(png: &[u8]) -> Vec<String> {
    let mut i = 8;
    let mut names = vec![];
    while i + 8 <= png.len() {
        let len = u32::from_be_bytes(png[i..i + 4].try_into().unwrap()) as usize;
        names.push(String::from_utf8_lossy(&png[i + 4..i + 8]).into_owned());
        i += 12 + len;
    }
    names
}

#[test]
fn each_intake_rejection_has_its_code() {
    let l = Limits::default();
    assert_eq!(intake(&[], &l).unwrap_err().code(), ErrorCode::EmptyFile);
    let small = Limits {
        max_bytes: 1000,
        ..l
    };
    assert_eq!(
        intake(&jpeg(64, 64), &small).unwrap_err().code(),
        ErrorCode::FileTooLarge
    );
    assert_eq!(
        intake(b"GIF89a\x01\0\x01\0", &l).unwrap_err().code(),
        ErrorCode::UnsupportedFormat
    );
    assert_eq!(
        intake(b"hello, this is text", &l).unwrap_err().to_string(),
        "unsupported image format (text): upload a JPEG, PNG or WebP photo"
    );
    let bomb = png_claiming(100_000, 100_000);
    assert!(bomb.len() < 200, "a tiny file");
    let err = intake(&bomb, &l).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ImageTooLarge, "{err}");
    let mp = Limits {
        max_pixels: 1000,
        ..l
    };
    assert_eq!(
        intake(&jpeg(64, 64), &mp).unwrap_err().code(),
        ErrorCode::ImageTooLarge
    );
    let j = jpeg(64, 64);
    assert_eq!(
        intake(&j[..j.len() / 2], &l).unwrap_err().code(),
        ErrorCode::CorruptImage,
        "truncated"
    );
    let mut garbage = b"\x89PNG\r\n\x1a\n".to_vec();
    garbage.extend_from_slice(&[7u8; 100]);
    assert_eq!(
        intake(&garbage, &l).unwrap_err().code(),
        ErrorCode::CorruptImage
    );
}

#[test]
fn intake_accepts_jpeg_png_webp_by_content_and_normalizes() {
    let l = Limits::default();
    let from_jpeg = intake(&jpeg(40, 30), &l).unwrap();
    assert_eq!(
        (
            from_jpeg.width,
            from_jpeg.height,
            from_jpeg.source_format.as_str()
        ),
        (40, 30, "jpeg")
    );
    let img = RgbImage::from_fn(20, 10, |x, _| Rgb([x as u8 * 10, 0, 0]));
    let png = encode_png(&img);
    assert_eq!(
        decode_png(&intake(&png, &l).unwrap().png).unwrap(),
        img,
        "PNG round-trips losslessly"
    );
    let mut webp = vec![];
    image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
        .encode(img.as_raw(), 20, 10, image::ExtendedColorType::Rgb8)
        .unwrap();
    let n = intake(&webp, &l).unwrap();
    assert_eq!(
        (n.source_format.as_str(), decode_png(&n.png).unwrap()),
        ("webp", img)
    );
}

#[test]
fn exif_orientation_is_applied_and_all_metadata_dropped() {
    let rotated = with_exif_orientation(&jpeg(40, 20), 6);
    assert!(rotated.windows(4).any(|w| w == b"Exif"));
    let n = intake(&rotated, &Limits::default()).unwrap();
    assert_eq!((n.width, n.height), (20, 40), "rotated upright");
    assert!(!n.png.windows(4).any(|w| w == b"Exif" || w == b"eXIf"));
    assert_eq!(
        png_chunks(&n.png),
        ["IHDR", "IDAT", "IEND"],
        "no metadata chunks"
    );
}

/// Whether `p` is inside polygon `poly` (even-odd rule).
fn in_polygon(poly: &[Pt], p: Pt) -> bool {
    let mut inside = false;
    for (k, a) in poly.iter().enumerate() {
        let b = poly[(k + 1) % poly.len()];
        if (a.y > p.y) != (b.y > p.y) && p.x < a.x + (p.y - a.y) * (b.x - a.x) / (b.y - a.y) {
            inside = !inside;
        }
    }
    inside
}

/// Dark lipstick on a closed mouth is not an open mouth: the inner lip lines stay where they
/// were without it (they were set on the lipstick's edges, the lips' bands shrank to a
/// millimetre, and a lip augmentation hardly moved the lips), and so do the lips' bands.
#[test]
fn dark_lipstick_is_not_read_as_an_open_mouth() {
    use face::regions::{LOWER_LIP_INNER, LOWER_LIP_OUTER, UPPER_LIP_INNER, UPPER_LIP_OUTER};
    let hopper = portrait("grace_hopper.jpg");
    let bare = face::detect(&hopper).unwrap();
    let outline: Vec<Pt> = UPPER_LIP_OUTER
        .iter()
        .chain(LOWER_LIP_OUTER.iter().rev())
        .map(|&i| bare.points[i])
        .collect();
    for (name, colour) in [
        ("berry", [96u8, 18, 40]),
        ("red", [150, 24, 36]),
        ("brown", [88, 40, 34]),
    ] {
        let mut painted = hopper.clone();
        for (x, y, p) in painted.enumerate_pixels_mut() {
            if in_polygon(&outline, Pt::new(x as f32 + 0.5, y as f32 + 0.5)) {
                for (v, lipstick) in p.0.iter_mut().zip(colour) {
                    // The lipstick's colour, with a little of the lips' texture.
                    *v = (0.2 * f32::from(*v) + 0.8 * f32::from(lipstick)) as u8;
                }
            }
        }
        let lm = face::detect(&painted).expect("the face is found");
        let (f, bf) = (lm.frame(), bare.frame());
        for line in [UPPER_LIP_INNER, LOWER_LIP_INNER] {
            for &i in &line[1..line.len() - 1] {
                let (_, v) = f.local(lm.points[i]);
                let (_, v0) = bf.local(bare.points[i]);
                assert!(
                    (v - v0).abs() < 1.0,
                    "{name}: point {i} moved {:.2} mm",
                    v - v0
                );
            }
        }
        let (bands, bare_bands) = (
            afterview_imaging::procedures::lip_bands(&lm),
            afterview_imaging::procedures::lip_bands(&bare),
        );
        for (b, b0) in bands.iter().zip(&bare_bands) {
            assert!(
                (b.height - b0.height).abs() < 1.0,
                "{name}: a lip band of {:.1} mm became {:.1} mm",
                b0.height,
                b.height
            );
        }
    }
}

/// A photo's small copy for lists: a JPEG of at most 256 pixels a side, the photo's aspect,
/// upright, with none of the upload's metadata; a smaller picture keeps its size.
#[test]
fn thumbnails_are_small_upright_jpegs_without_metadata() {
    let rotated = with_exif_orientation(&jpeg(1600, 1200), 6);
    let n = intake(&rotated, &Limits::default()).unwrap();
    assert_eq!((n.width, n.height), (1200, 1600));
    let t = &n.thumbnail;
    assert!(t.starts_with(&[0xFF, 0xD8]), "a JPEG");
    assert!(!t.windows(4).any(|w| w == b"Exif"), "no EXIF");
    assert!(t.len() < 40_000, "{} bytes", t.len());
    let small = image::load_from_memory(t).unwrap();
    assert_eq!(
        (small.width(), small.height()),
        (192, 256),
        "upright, aspect kept"
    );
    // The colours of the photo, not of another picture: the corner the rotation put top left.
    let full = decode_png(&n.png).unwrap();
    let (a, b) = (full.get_pixel(8, 8).0, small.to_rgb8().get_pixel(1, 1).0);
    assert!(
        a.iter().zip(b).all(|(x, y)| x.abs_diff(y) < 24),
        "{a:?} {b:?}"
    );
    let tiny = RgbImage::from_pixel(40, 30, Rgb([200, 10, 10]));
    let t = image::load_from_memory(&intake::thumbnail(&tiny)).unwrap();
    assert_eq!((t.width(), t.height()), (40, 30), "never enlarged");
    let thin = RgbImage::new(3, 3000);
    let t = image::load_from_memory(&intake::thumbnail(&thin)).unwrap();
    assert_eq!((t.width(), t.height()), (1, 256), "at least one pixel wide");
}

/// A headshot cropped just under the chin: a facelift, whose neck handles lie below the
/// frame, is refused (`feature_not_visible`) instead of warped with the edge row repeated;
/// a procedure inside the photo still works.
#[test]
fn a_face_cut_by_the_frame_is_not_warped_with_pixels_the_photo_lacks() {
    let hopper = portrait("grace_hopper.jpg");
    let lm = face::detect(&hopper).unwrap();
    let bottom = (lm.chin().y + 2.0 * lm.frame().px_per_mm).round() as u32;
    assert!(bottom < hopper.height(), "the portrait shows the neck");
    let cropped = image::imageops::crop_imm(&hopper, 0, 0, hopper.width(), bottom).to_image();
    let lm = face::detect(&cropped).expect("the face is still found");
    let Err(e) = simulate(&cropped, "facelift", Intensity::Moderate, &lm) else {
        panic!("a facelift of a neck the photo does not show is refused");
    };
    assert_eq!(e.code(), ErrorCode::FeatureNotVisible, "{e}");
    assert!(simulate(&cropped, "rhinoplasty", Intensity::Moderate, &lm).is_ok());
    // Cropped through the forehead: a brow lift moves the forehead up, out of the frame, but
    // takes nothing from beyond it.
    let lm = face::detect(&hopper).unwrap();
    let top = (lm.left_eye().y - 25.0 * lm.frame().px_per_mm).round() as u32;
    assert!(top > 0, "the portrait shows the forehead");
    let cropped = image::imageops::crop_imm(&hopper, 0, top, hopper.width(), hopper.height() - top)
        .to_image();
    let lm = face::detect(&cropped).expect("the face is still found");
    assert!(simulate(&cropped, "brow-lift", Intensity::Moderate, &lm).is_ok());
}

/// A face so small that the procedures' millimetres fall under a pixel gets no preview that
/// would look like the photo: `no_face_detected`, saying the face is too small.
#[test]
fn a_face_too_small_for_a_visible_change_is_refused() {
    let hopper = portrait("grace_hopper.jpg");
    let (w, h) = hopper.dimensions();
    let small =
        image::imageops::resize(&hopper, w / 3, h / 3, image::imageops::FilterType::Triangle);
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([118, 128, 136]));
    image::imageops::replace(&mut canvas, &small, i64::from(w / 3), i64::from(h / 3));
    let lm = face::detect(&canvas).expect("the detector still finds it");
    assert!(
        lm.frame().px_per_mm < face::MIN_PX_PER_MM,
        "{}",
        lm.frame().px_per_mm
    );
    let e = locate(&canvas, None).unwrap_err();
    assert!(matches!(e, face::FaceError::TooSmall(_)), "{e}");
    assert_eq!(ImagingError::Face(e).code(), ErrorCode::NoFaceDetected);
}

/// An answer framed as a generative model may frame one: the edited photo turned a little,
/// placed in the middle of a grey square and scaled to 1024 × 1024.
fn reframed(img: &RgbImage, degrees: f32) -> RgbImage {
    let r = rotated(img, degrees);
    let (w, h) = r.dimensions();
    let side = w.max(h);
    let mut square = RgbImage::from_pixel(side, side, Rgb([128, 128, 128]));
    image::imageops::replace(
        &mut square,
        &r,
        i64::from((side - w) / 2),
        i64::from((side - h) / 2),
    );
    image::imageops::resize(&square, 1024, 1024, image::imageops::FilterType::CatmullRom)
}

/// The mean difference (0-255, over the three channels) between two pictures where `mask`
/// lets the blend take the answer.
fn difference_in(a: &RgbImage, b: &RgbImage, mask: &[f32]) -> f32 {
    let (mut sum, mut n) = (0u64, 0u64);
    for (x, y, p) in a.enumerate_pixels() {
        if mask[(y * a.width() + x) as usize] > 0.5 {
            let q = b.get_pixel(x, y).0;
            sum += (0..3)
                .map(|c| u64::from(p.0[c].abs_diff(q[c])))
                .sum::<u64>();
            n += 3;
        }
    }
    assert!(n > 0, "the mask covers something");
    sum as f32 / n as f32
}

/// A generated picture at another size and framing is laid over the photo by the faces'
/// landmarks: inside the treated region the blend takes the edit where the edit is, not a
/// copy shifted by the reframing (which stretching the answer to the photo's size gave).
#[test]
fn generated_answers_are_laid_over_the_photo_by_the_face() {
    for (name, procedure) in [
        ("grace_hopper.jpg", "rhinoplasty"),
        ("grace_hopper.jpg", "facelift"),
        ("astronaut.png", "lip-augmentation"),
    ] {
        let photo = portrait(name);
        let lm = locate(&photo, None).unwrap();
        let edited = simulate(&photo, procedure, Intensity::Pronounced, &lm)
            .unwrap()
            .image;
        let answer = reframed(&edited, 3.0);
        let laid = register(&photo, &lm, &answer).unwrap();
        assert_eq!(laid.image.dimensions(), photo.dimensions());
        let mask = afterview_imaging::treatment_mask(&photo, procedure, Intensity::Pronounced, &lm)
            .unwrap();
        let (w, h) = photo.dimensions();
        let stretched =
            image::imageops::resize(&answer, w, h, image::imageops::FilterType::CatmullRom);
        let (off_laid, off_stretched) = (
            difference_in(&laid.image, &edited, &mask),
            difference_in(&stretched, &edited, &mask),
        );
        eprintln!(
            "{name} {procedure}: misfit {:.4}, laid {off_laid:.2}, stretched {off_stretched:.2}",
            laid.misfit
        );
        assert!(
            laid.misfit < register::MAX_MISFIT / 2.0,
            "{name} {procedure}: the same face fits ({})",
            laid.misfit
        );
        // (Resampling the answer twice blurs texture: the more textured skin the edit moves,
        // the higher `laid`; Grace Hopper's facelift moves her wrinkled jowls and neck, 6.8.)
        assert!(
            off_laid < 7.5 && off_stretched > 4.0 * off_laid,
            "{name} {procedure}: laid {off_laid}, stretched {off_stretched}"
        );
    }
}

/// An answer showing another person, or no face, is refused: blended, it would ghost.
#[test]
fn answers_with_another_face_or_none_are_refused() {
    for (photo, other) in [
        ("grace_hopper.jpg", "astronaut.png"),
        ("astronaut.png", "grace_hopper.jpg"),
    ] {
        let photo = portrait(photo);
        let lm = locate(&photo, None).unwrap();
        match register(&photo, &lm, &reframed(&portrait(other), 0.0)) {
            Err(RegisterError::Mismatch(m)) => {
                eprintln!("{other} over the photo: misfit {m:.4}");
                assert!(m > register::MAX_MISFIT);
            }
            r => panic!("{other}: {:?}", r.map(|r| r.misfit)),
        }
        let none = portrait("no_face_coffee.png");
        assert_eq!(
            register(&photo, &lm, &none).unwrap_err(),
            RegisterError::NoFace
        );
    }
}

/// Phones append a video to a "motion photo" (Google's Motion Photo format, Samsung's,
/// Xiaomi's `MVIMG`): one whole JPEG, then an MP4. The photo is read. A JPEG cut before its
/// end is still refused, even when a segment before its scan (a thumbnail: a whole JPEG)
/// holds an end marker near the cut.
#[test]
fn motion_photos_are_read_and_cut_jpegs_refused() {
    let l = Limits::default();
    let mut motion = jpeg(64, 48);
    motion.extend_from_slice(b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom");
    motion.extend(std::iter::repeat_n(0x11u8, 8192));
    let n = intake(&motion, &l).unwrap();
    assert_eq!((n.width, n.height), (64, 48));

    let (thumb, photo) = (jpeg(8, 8), jpeg(64, 48));
    let mut with_thumb = photo[..2].to_vec();
    with_thumb.extend_from_slice(&[0xFF, 0xFE]);
    with_thumb.extend_from_slice(&(thumb.len() as u16 + 2).to_be_bytes());
    with_thumb.extend_from_slice(&thumb);
    with_thumb.extend_from_slice(&photo[2..]);
    assert_eq!(intake(&with_thumb, &l).unwrap().width, 64);
    let cut = &with_thumb[..with_thumb.len() - 200];
    assert_eq!(
        intake(cut, &l).unwrap_err().code(),
        ErrorCode::CorruptImage,
        "cut in its scan"
    );
    let cut = &with_thumb[..thumb.len() + 10];
    assert_eq!(
        intake(cut, &l).unwrap_err().code(),
        ErrorCode::CorruptImage,
        "cut after the thumbnail"
    );
    // ISO media files: the brand names what they are.
    for (brand, named) in [(b"mp42", "video"), (b"heic", "heic"), (b"avif", "avif")] {
        let mut f = b"\0\0\0\x18ftyp".to_vec();
        f.extend_from_slice(brand);
        f.extend_from_slice(&[0; 16]);
        assert_eq!(
            intake(&f, &l).unwrap_err().to_string(),
            format!("unsupported image format ({named}): upload a JPEG, PNG or WebP photo")
        );
    }
}

/// sRGB from Display P3, computed here from the two colour spaces' definitions (both D65,
/// both with sRGB's transfer curve).
fn p3_to_srgb(p: [u8; 3]) -> [f64; 3] {
    let lin = |v: f64| {
        if v <= 0.04045 {
            v / 12.92
        } else {
            ((v + 0.055) / 1.055).powf(2.4)
        }
    };
    let enc = |v: f64| {
        let v = v.clamp(0.0, 1.0);
        255.0
            * if v <= 0.003_130_8 {
                v * 12.92
            } else {
                1.055 * v.powf(1.0 / 2.4) - 0.055
            }
    };
    let [r, g, b] = p.map(|c| lin(f64::from(c) / 255.0));
    [
        enc(1.224_940 * r - 0.224_940 * g),
        enc(-0.042_057 * r + 1.042_057 * g),
        enc(-0.019_638 * r - 0.078_636 * g + 1.098_274 * b),
    ]
}

/// A photo with a Display P3 profile (an iPhone's) is stored in sRGB: its values read as sRGB
/// looked duller than on the phone. JPEG and PNG alike; a profile with sRGB's primaries leaves
/// the pixels as they are.
#[test]
fn colour_profiles_are_converted_to_srgb() {
    use image::ImageEncoder;
    let l = Limits::default();
    let p3 = moxcms::ColorProfile::new_display_p3().encode().unwrap();
    let colours = [[200u8, 120, 100], [180, 60, 70], [90, 140, 200]];
    let img = RgbImage::from_fn(48, 16, |x, _| Rgb(colours[(x / 16) as usize]));
    let mut as_jpeg = vec![];
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut as_jpeg, 100);
    enc.set_icc_profile(p3.clone()).unwrap();
    enc.write_image(img.as_raw(), 48, 16, image::ExtendedColorType::Rgb8)
        .unwrap();
    let mut as_png = vec![];
    let mut enc = image::codecs::png::PngEncoder::new(&mut as_png);
    enc.set_icc_profile(p3).unwrap();
    enc.write_image(img.as_raw(), 48, 16, image::ExtendedColorType::Rgb8)
        .unwrap();
    for (name, file, tolerance) in [("jpeg", as_jpeg, 4.0), ("png", as_png, 1.5)] {
        let stored = decode_png(&intake(&file, &l).unwrap().png).unwrap();
        for (i, c) in colours.iter().enumerate() {
            let got = stored.get_pixel(i as u32 * 16 + 8, 8).0;
            let want = p3_to_srgb(*c);
            assert!(
                (0..3).all(|k| (f64::from(got[k]) - want[k]).abs() <= tolerance),
                "{name}: P3 {c:?} stored as {got:?}, sRGB is {want:.1?}"
            );
        }
    }
    let srgb = moxcms::ColorProfile::new_srgb().encode().unwrap();
    let mut as_png = vec![];
    let mut enc = image::codecs::png::PngEncoder::new(&mut as_png);
    enc.set_icc_profile(srgb).unwrap();
    enc.write_image(img.as_raw(), 48, 16, image::ExtendedColorType::Rgb8)
        .unwrap();
    assert_eq!(
        decode_png(&intake(&as_png, &l).unwrap().png).unwrap(),
        img,
        "an sRGB profile changes nothing"
    );
}

/// Two people in the picture, control points on the smaller face (the patient): the answer's
/// face that fits the photo's is used, not the largest (which missed by 2.5 % and was refused,
/// or, with estimated landmarks, was laid over the patient's).
#[test]
fn answers_are_laid_by_the_patients_face_among_several() {
    let astro = portrait("astronaut.png");
    let hopper = portrait("grace_hopper.jpg");
    let small = image::imageops::resize(
        &hopper,
        hopper.width() / 2,
        hopper.height() / 2,
        image::imageops::FilterType::Triangle,
    );
    let big = image::imageops::resize(&astro, 700, 700, image::imageops::FilterType::Triangle);
    let mut canvas = RgbImage::from_pixel(1100, 720, Rgb([128, 128, 128]));
    image::imageops::replace(&mut canvas, &big, 0, 10);
    let (ox, oy) = (780.0, 200.0);
    image::imageops::replace(&mut canvas, &small, ox as i64, oy as i64);
    let cp = face::detect(&small).unwrap().control_points((ox, oy));
    let lm = locate(&canvas, Some(&cp)).unwrap();
    assert_eq!(lm.source, Source::ControlPoints);
    assert!(lm.nose_tip().x > ox, "the patient's face");
    let largest = face::detect(&canvas).unwrap();
    assert!(largest.nose_tip().x < ox, "the other face is the larger");
    let laid = register(&canvas, &lm, &reframed(&canvas, 2.0)).unwrap();
    assert!(laid.misfit < register::MAX_MISFIT / 2.0, "{}", laid.misfit);
}

/// Beside an ear, what lies behind it closes over the ear's old place evenly: across the rows
/// of the ears, no strip is stretched sideways by more than 1.45 times. Left to the warp's
/// radius the setback faded within a few millimetres beyond the rim, and the rim's light and
/// the background were dragged into streaks.
#[test]
fn an_otoplasty_stretches_nothing_beside_the_ears() {
    for img in [
        portrait("grace_hopper.jpg"),
        rotated(&portrait("grace_hopper.jpg"), 8.0),
    ] {
        let lm = face::detect(&img).unwrap();
        let f = lm.frame();
        let field = pronounced_warp("otoplasty", &img, &lm);
        // Where a row's pixels come from, along the row (mm).
        let source = |u: f32, v: f32| u + f.local_vec(field.at(f.at(u, v))).0;
        let mut worst = (1.0f32, 0.0, 0.0);
        for v in (-10..50).step_by(2) {
            let v = v as f32;
            for side in [-1.0f32, 1.0] {
                for u in 80..260 {
                    let u = side * u as f32 * 0.5;
                    let ds = (source(u + side * 0.5, v) - source(u, v)) * side / 0.5;
                    if ds > 0.0 && 1.0 / ds > worst.0 {
                        worst = (1.0 / ds, u, v);
                    }
                }
            }
        }
        assert!(
            worst.0 <= 1.5,
            "stretched {:.2} times at u {:.1}, v {:.1} mm",
            worst.0,
            worst.1,
            worst.2
        );
    }
}

/// A resurfacing fades out over the forehead instead of ending in a line: on the astronaut's
/// face given a fine texture everywhere, the texture removed 4 mm above the mesh's top is at
/// least 30 % of what the mid-forehead loses, and no millimetre up from the mesh's top loses
/// 30 % of that at once (it stopped within 2 mm, 2 mm inside the mesh's outline: smooth below,
/// lined above, on an older bald forehead).
#[test]
fn a_resurfacing_fades_out_over_the_forehead() {
    let mut img = portrait("astronaut.png");
    for (x, y, p) in img.enumerate_pixels_mut() {
        let d = ((x * 7 + y * 13) % 5) as i32 * 6 - 12;
        p.0 = p.0.map(|c| (i32::from(c) + d).clamp(0, 255) as u8);
    }
    let lm = face::detect(&img).unwrap();
    let f = lm.frame();
    let out = simulate(&img, "skin-resurfacing", Intensity::Moderate, &lm)
        .unwrap()
        .image;
    // Mean change per 1 mm band up the forehead's middle (|u| < 12 mm), by v.
    let removed = |v0: f32| {
        let (mut sum, mut n) = (0.0f32, 0);
        for (x, y, p) in out.enumerate_pixels() {
            let (u, v) = f.local(Pt::new(x as f32, y as f32));
            if u.abs() < 12.0 && (v0..v0 + 1.0).contains(&v) {
                let b = img.get_pixel(x, y).0;
                sum += (0..3)
                    .map(|c| f32::from(p.0[c].abs_diff(b[c])))
                    .sum::<f32>();
                n += 1;
            }
        }
        sum / n.max(1) as f32
    };
    let v_top = f.local(lm.points[10]).1;
    let v_brows = face::regions::BROW_UPPER
        .iter()
        .flatten()
        .map(|&i| f.local(lm.points[i]).1)
        .fold(f32::MAX, f32::min);
    let mid = removed(0.5 * (v_top + v_brows));
    assert!(mid > 2.0, "the forehead is resurfaced: {mid:.2}");
    let above = removed(v_top - 5.0);
    assert!(
        above >= 0.3 * mid,
        "4 mm above the mesh: {above:.2} of {mid:.2}"
    );
    // From the mesh's top up, millimetre by millimetre (10-13 inside; 0 from 2 mm above
    // before).
    let bands: Vec<f32> = (0..12).map(|i| removed(v_top - i as f32)).collect();
    for w in bands.windows(2) {
        assert!(w[0] - w[1] <= 0.3 * mid, "a step: {bands:.2?}");
    }
}

/// A collar right under the jaw (painted in a colour far from skin): a facelift lifts the
/// jowls but draws nothing out of the collar. Drawn from it (its pixels filled in from the
/// skin beside them, as behind a frame's thin line), the skin above the collar took one row's
/// colour repeated down each column: streaks, and a step where the jaw met the collar.
#[test]
fn a_facelift_draws_nothing_out_of_a_collar_under_the_jaw() {
    // Twice the size, so that the lift spans more pixels than the JPEG's grain.
    let small = portrait("grace_hopper.jpg");
    let (sw, sh) = small.dimensions();
    let mut img = image::imageops::resize(
        &small,
        2 * sw,
        2 * sh,
        image::imageops::FilterType::CatmullRom,
    );
    let lm = face::detect(&img).unwrap();
    let f = lm.frame();
    let mut jaw: Vec<(f32, f32)> = face::regions::JAWLINE
        .iter()
        .map(|&i| f.local(lm.points[i]))
        .collect();
    jaw.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (u0, u1) = (jaw[0].0, jaw[jaw.len() - 1].0);
    let jaw_v = |u: f32| {
        let i = jaw.partition_point(|p| p.0 <= u).clamp(1, jaw.len() - 1);
        let (a, b) = (jaw[i - 1], jaw[i]);
        a.1 + (b.1 - a.1) * ((u - a.0) / (b.0 - a.0).max(1e-3)).clamp(0.0, 1.0)
    };
    let painted = |x: u32, y: u32| {
        let (u, v) = f.local(Pt::new(x as f32, y as f32));
        (u0..=u1).contains(&u) && v > jaw_v(u) + 1.0
    };
    let (w, h) = img.dimensions();
    for y in 0..h {
        for x in 0..w {
            if painted(x, y) {
                img.put_pixel(x, y, Rgb([40, 60, 110]));
            }
        }
    }
    // The skin's texture within 2.5 mm above the collar, across the jaw's middle 80 %: the
    // mean step between vertical neighbours (luminance), after over before.
    let lum = |p: &Rgb<u8>| {
        0.299 * f32::from(p.0[0]) + 0.587 * f32::from(p.0[1]) + 0.114 * f32::from(p.0[2])
    };
    let margin = (u1 - u0) * 0.1;
    let band: Vec<(u32, u32)> = (0..h - 1)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let (u, v) = f.local(Pt::new(x as f32, y as f32));
            let near = (u0 + margin..=u1 - margin).contains(&u) && v > jaw_v(u) - 2.5;
            near && !painted(x, y) && !painted(x, y + 1)
        })
        .collect();
    assert!(
        band.len() > 300,
        "the band holds the jaw's skin ({})",
        band.len()
    );
    let texture = |im: &RgbImage| {
        band.iter()
            .map(|&(x, y)| (lum(im.get_pixel(x, y)) - lum(im.get_pixel(x, y + 1))).abs())
            .sum::<f32>()
    };
    for intensity in [Intensity::Moderate, Intensity::Pronounced] {
        let out = simulate(&img, "facelift", intensity, &lm).unwrap().image;
        let kept = texture(&out) / texture(&img);
        eprintln!("{intensity:?}: texture kept above the collar {kept:.2}");
        assert!(
            kept > 0.9,
            "{intensity:?}: the skin keeps its texture: {kept:.2}"
        );
    }
}

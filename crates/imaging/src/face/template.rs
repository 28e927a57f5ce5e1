//! The mean face: Face Mesh's 468 points averaged over the test portraits (each with its
//! mirror image, so the shape is symmetric), in the face frame with the eye distance as unit.
//! Fitted to client control points when the models see no face there. `mean_face.rs` is
//! written by `cargo run -p afterview-imaging --example mean-face`.

use super::{MESH_POINTS, Pt, regions};

/// `(u, v)` per mesh point: origin between the eyes, u along the eye line, v towards the chin,
/// unit = distance between the eye centres.
#[allow(clippy::approx_constant)] // measured coordinates; some happen to read like π/4 or ln 2
pub(crate) const MEAN_FACE: [[f32; 2]; MESH_POINTS] = include!("mean_face.rs");

/// The points a client gives.
pub(crate) struct Given {
    pub(crate) right_eye: Pt,
    pub(crate) left_eye: Pt,
    pub(crate) nose_tip: Pt,
    pub(crate) mouth_right: Pt,
    pub(crate) mouth_left: Pt,
    pub(crate) chin: Option<Pt>,
}

/// Eye centres of the mean face (`(-0.5, 0)` and `(0.5, 0)` by construction).
const EYES: [[f32; 2]; 2] = [[-0.5, 0.0], [0.5, 0.0]];

/// The mean face mapped onto the given points by the least-squares affine map.
pub(crate) fn fit(g: &Given) -> Vec<Pt> {
    let m = |i: usize| MEAN_FACE[i];
    let mut pairs = vec![
        (EYES[0], g.right_eye),
        (EYES[1], g.left_eye),
        (m(regions::NOSE_TIP), g.nose_tip),
        (m(regions::MOUTH_CORNERS[0]), g.mouth_right),
        (m(regions::MOUTH_CORNERS[1]), g.mouth_left),
    ];
    if let Some(c) = g.chin {
        pairs.push((m(regions::MENTON), c));
    }
    // Normal equations for x' = a u + b v + c (and y' likewise).
    let mut ata = [[0f64; 3]; 3];
    let (mut atx, mut aty) = ([0f64; 3], [0f64; 3]);
    for ([u, v], p) in &pairs {
        let row = [f64::from(*u), f64::from(*v), 1.0];
        for i in 0..3 {
            for j in 0..3 {
                ata[i][j] += row[i] * row[j];
            }
            atx[i] += row[i] * f64::from(p.x);
            aty[i] += row[i] * f64::from(p.y);
        }
    }
    let (cx, cy) = (solve3(ata, atx), solve3(ata, aty));
    MEAN_FACE
        .iter()
        .map(|&[u, v]| {
            let (u, v) = (f64::from(u), f64::from(v));
            Pt::new(
                (cx[0] * u + cx[1] * v + cx[2]) as f32,
                (cy[0] * u + cy[1] * v + cy[2]) as f32,
            )
        })
        .collect()
}

/// Solves a 3×3 system by Cramer's rule (the fit's matrix is well conditioned: the points are
/// checked to span the face before).
fn solve3(a: [[f64; 3]; 3], b: [f64; 3]) -> [f64; 3] {
    let det = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(a);
    if d.abs() < 1e-12 {
        return [0.0; 3];
    }
    std::array::from_fn(|k| {
        let mut m = a;
        for (row, &bv) in m.iter_mut().zip(&b) {
            row[k] = bv;
        }
        det(m) / d
    })
}

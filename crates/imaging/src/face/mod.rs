//! Where the face is, in detail: 468 detected landmarks (MediaPipe Face Mesh), both irises
//! (MediaPipe Iris), and the face's own frame with a millimetre scale.
//!
//! Pipeline ([`locate`]): BlazeFace finds face boxes and eye keypoints ([`detect_faces`]); the
//! largest face is cropped level with its eyes and Face Mesh gives 468 points and a presence
//! score; a second, tighter crop from those points refines them; Iris refines each eye's and
//! brow's contour and measures the iris. The models are bundled (`models/`, Apache-2.0) and run
//! by `afterview-nn`: offline, deterministic.
//!
//! Scale: the human iris is close to 11.7 mm across whatever the face's size, so
//! [`Frame::px_per_mm`] comes from the measured iris diameter (from the eye distance when the
//! irises are too small to measure). Everything downstream works in the [`Frame`]: origin
//! between the irises, x along the iris line, y towards the chin, so a tilted head is treated
//! along its own axes.
//!
//! Client control points (`options.control_points`) place the face crop instead of the
//! detector; when Face Mesh finds no face there either, a mean face shape is fitted to them.

mod detect;
mod mesh;
mod refine;
pub mod regions;
pub(crate) mod skin;
mod template;

use std::sync::OnceLock;

use afterview_core::tasks::ControlPoints;
use afterview_nn::Model;
use image::RgbImage;

pub use crate::geom::Pt;
pub use detect::detect_faces;
use mesh::Roi;

/// Mean diameter of the human iris (horizontal visible iris diameter), millimetres.
pub const IRIS_DIAMETER_MM: f32 = 11.7;
/// Mean adult interpupillary distance, millimetres: the scale when irises cannot be measured.
pub const IPD_MM: f32 = 63.0;
/// Number of Face Mesh points.
pub const MESH_POINTS: usize = 468;

/// `poly` grown outwards from its centroid by `mm` of the face's frame (inwards when negative).
pub(crate) fn grow(poly: &[Pt], f: &Frame, mm: f32) -> Vec<Pt> {
    let c = poly
        .iter()
        .fold(Pt::default(), |a, p| a.plus(*p))
        .times(1.0 / poly.len().max(1) as f32);
    poly.iter()
        .map(|p| {
            let d = p.minus(c);
            let l = d.len().max(1e-3);
            p.plus(d.times(f.px(mm) / l))
        })
        .collect()
}

/// A detected face box with BlazeFace's six keypoints, in image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceBox {
    /// Left.
    pub x: f32,
    /// Top.
    pub y: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
    /// Detector confidence, 0-1.
    pub score: f64,
    /// Image-left eye, image-right eye, nose tip, mouth centre, image-left tragion,
    /// image-right tragion.
    pub keypoints: [Pt; 6],
}

/// One iris.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Iris {
    /// Centre, image pixels.
    pub center: Pt,
    /// Diameter, image pixels.
    pub diameter: f32,
}

/// How the landmarks were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Detected: BlazeFace + Face Mesh + Iris.
    Detected,
    /// Face Mesh from a crop placed by client control points.
    ControlPoints,
    /// The mean face shape fitted to client control points (the models saw no face).
    Template,
}

/// A face's landmarks in image pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Landmarks {
    /// The 468 Face Mesh points (MediaPipe's indices; see [`regions`]), eye and brow contours
    /// refined by Iris.
    pub points: Vec<Pt>,
    /// The subject's right iris (image left in a non-mirrored photo), then the left.
    pub irises: [Iris; 2],
    /// Whether the irises were measured (not estimated).
    pub irises_measured: bool,
    /// Where the points come from.
    pub source: Source,
}

/// The face's coordinate frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    /// Between the irises.
    pub origin: Pt,
    /// Unit vector along the iris line (towards the image's right).
    pub ex: Pt,
    /// Unit vector perpendicular to it, towards the chin.
    pub ey: Pt,
    /// Distance between the irises, pixels.
    pub iod: f32,
    /// Pixels per millimetre at the face.
    pub px_per_mm: f32,
}

impl Frame {
    /// Image point at face coordinates `(u, v)` in millimetres.
    pub fn at(&self, u: f32, v: f32) -> Pt {
        self.origin.plus(self.vec(u, v))
    }

    /// A displacement of `(du, dv)` millimetres in image pixels.
    pub fn vec(&self, du: f32, dv: f32) -> Pt {
        self.ex
            .times(du * self.px_per_mm)
            .plus(self.ey.times(dv * self.px_per_mm))
    }

    /// Face coordinates (millimetres) of an image point.
    pub fn local(&self, p: Pt) -> (f32, f32) {
        let d = p.minus(self.origin);
        (
            d.dot(self.ex) / self.px_per_mm,
            d.dot(self.ey) / self.px_per_mm,
        )
    }

    /// Face components (millimetres) of an image displacement.
    pub fn local_vec(&self, d: Pt) -> (f32, f32) {
        (
            d.dot(self.ex) / self.px_per_mm,
            d.dot(self.ey) / self.px_per_mm,
        )
    }

    /// Millimetres to pixels.
    pub fn px(&self, mm: f32) -> f32 {
        mm * self.px_per_mm
    }
}

/// Why no usable face was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaceError {
    /// The detector found nothing.
    #[error(
        "no face was detected in the photo; use a frontal photo in which the face spans at least a tenth of the photo's width, or pass control points"
    )]
    NoFace,
    /// A face so small in the photo that the procedures' millimetres would be under a pixel:
    /// a preview would look like the photo.
    #[error(
        "the face is too small in this photo ({0:.2} pixels per millimetre, at least {MIN_PX_PER_MM} needed); use a photo in which the face spans at least a tenth of the photo's width"
    )]
    TooSmall(f32),
    /// The given control points cannot be a face in this image.
    #[error("invalid control points: {0}")]
    BadControlPoints(String),
}

/// The bundled networks.
pub(crate) struct Models {
    pub(crate) detector: Model,
    pub(crate) mesh: Model,
    pub(crate) iris: Model,
}

/// BlazeFace "back camera" (256×256), converted to ONNX by `scripts/face-models.sh`.
pub const DETECTOR_ONNX: &[u8] = include_bytes!("../../models/face_detection_back.onnx");
/// Face Mesh (468 points).
pub const MESH_ONNX: &[u8] = include_bytes!("../../models/face_landmark.onnx");
/// Iris.
pub const IRIS_ONNX: &[u8] = include_bytes!("../../models/iris_landmark.onnx");

pub(crate) fn models() -> &'static Models {
    static M: OnceLock<Models> = OnceLock::new();
    M.get_or_init(|| {
        let load = |b: &[u8]| Model::from_onnx(b).expect("the bundled face models load");
        Models {
            detector: load(DETECTOR_ONNX),
            mesh: load(MESH_ONNX),
            iris: load(IRIS_ONNX),
        }
    })
}

/// Resizes with a triangle filter, box-averaging first when shrinking a lot (fast on 40 MP).
pub(crate) fn resize(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let k = (img.width() / w.max(1)).min(img.height() / h.max(1)) / 2;
    if k >= 2 {
        let (bw, bh) = (img.width() / k, img.height() / k);
        let n = k * k;
        let small = RgbImage::from_fn(bw, bh, |x, y| {
            let mut acc = [0u32; 3];
            for dy in 0..k {
                for dx in 0..k {
                    let p = img.get_pixel(x * k + dx, y * k + dy).0;
                    for c in 0..3 {
                        acc[c] += u32::from(p[c]);
                    }
                }
            }
            image::Rgb(acc.map(|v| ((v + n / 2) / n) as u8))
        });
        return image::imageops::resize(&small, w, h, image::imageops::FilterType::Triangle);
    }
    image::imageops::resize(img, w, h, image::imageops::FilterType::Triangle)
}

/// A face is present when Face Mesh is at least this sure.
const PRESENCE: f32 = 0.5;

/// Face Mesh twice (the second crop fitted to the first pass's points), then Iris.
fn mesh_from(img: &RgbImage, roi: Roi, source: Source) -> Option<Landmarks> {
    let (first, p1) = mesh::face_mesh(img, roi)?;
    if p1 < PRESENCE {
        return None;
    }
    let d = first[263].minus(first[33]);
    let roi2 = Roi::around(&first, d.y.atan2(d.x), 1.5);
    let mut points = match mesh::face_mesh(img, roi2) {
        Some((pts, p2)) if p2 >= PRESENCE => pts,
        _ => first,
    };
    let measured = mesh::irises(img, &mut points);
    let irises = measured.unwrap_or_else(|| {
        let centre = |ring: &[usize]| {
            let s = ring.iter().fold(Pt::default(), |a, &i| a.plus(points[i]));
            s.times(1.0 / ring.len() as f32)
        };
        let r = centre(&regions::RIGHT_EYE_RING);
        let l = centre(&regions::LEFT_EYE_RING);
        let d = l.minus(r).len() * IRIS_DIAMETER_MM / IPD_MM;
        [
            Iris {
                center: r,
                diameter: d,
            },
            Iris {
                center: l,
                diameter: d,
            },
        ]
    });
    let mut lm = Landmarks {
        points,
        irises,
        irises_measured: measured.is_some(),
        source,
    };
    refine::lips(img, &mut lm);
    Some(lm)
}

/// The detected faces, largest first, each measured by Face Mesh when it confirms it (lazily:
/// [`detect`] stops at the first).
fn meshes(img: &RgbImage) -> impl Iterator<Item = Landmarks> + '_ {
    let mut faces = detect_faces(img);
    faces.sort_by(|a, b| (b.w * b.h).total_cmp(&(a.w * a.h)));
    faces.into_iter().filter_map(move |f| {
        let d = f.keypoints[1].minus(f.keypoints[0]);
        let roi = Roi {
            center: Pt::new(f.x + f.w / 2.0, f.y + f.h / 2.0),
            side: f.w.max(f.h) * 1.5,
            angle: d.y.atan2(d.x),
        };
        mesh_from(img, roi, Source::Detected)
    })
}

/// Every face that Face Mesh confirms, largest first.
pub fn detect_all(img: &RgbImage) -> Vec<Landmarks> {
    meshes(img).collect()
}

/// Detects the largest face that Face Mesh confirms.
pub fn detect(img: &RgbImage) -> Option<Landmarks> {
    meshes(img).next()
}

impl Landmarks {
    /// From client-given control points, checked against the image size: Face Mesh on the crop
    /// they place, or the mean face fitted to them.
    pub fn from_control_points(img: &RgbImage, cp: &ControlPoints) -> Result<Self, FaceError> {
        let (width, height) = img.dimensions();
        let pt = |name: &str, p: [f32; 2]| -> Result<Pt, FaceError> {
            let (x, y) = (p[0], p[1]);
            if !x.is_finite()
                || !y.is_finite()
                || x < 0.0
                || y < 0.0
                || x >= width as f32
                || y >= height as f32
            {
                return Err(FaceError::BadControlPoints(format!(
                    "{name} ({x}, {y}) is outside the {width}x{height} image"
                )));
            }
            Ok(Pt::new(x, y))
        };
        let right_eye = pt("right_eye", cp.right_eye)?;
        let left_eye = pt("left_eye", cp.left_eye)?;
        let nose_tip = pt("nose_tip", cp.nose_tip)?;
        let mouth_right = pt("mouth_right", cp.mouth_right)?;
        let mouth_left = pt("mouth_left", cp.mouth_left)?;
        let chin = cp.chin.map(|c| pt("chin", c)).transpose()?;
        let eyes = left_eye.minus(right_eye);
        let iod = eyes.len();
        if iod < 8.0 {
            return Err(FaceError::BadControlPoints(
                "the eyes are less than 8 pixels apart".into(),
            ));
        }
        if left_eye.x <= right_eye.x {
            return Err(FaceError::BadControlPoints(
                "left_eye (the subject's left) must be on the image's right of right_eye".into(),
            ));
        }
        let (ex, origin) = (eyes.times(1.0 / iod), right_eye.mid(left_eye));
        let ey = Pt::new(-ex.y, ex.x);
        let v = |p: Pt| p.minus(origin).dot(ey) / iod;
        let (nv, mv) = (v(nose_tip), v(mouth_right.mid(mouth_left)));
        if !(0.2..=2.0).contains(&nv) || !(nv..=3.0).contains(&mv) {
            return Err(FaceError::BadControlPoints(
                "the nose must be below the eyes and the mouth below the nose".into(),
            ));
        }
        let given = template::Given {
            right_eye,
            left_eye,
            nose_tip,
            mouth_right,
            mouth_left,
            chin,
        };
        let fitted = template::fit(&given);
        let roi = Roi::around(&fitted, eyes.y.atan2(eyes.x), 1.5);
        if let Some(lm) = mesh_from(img, roi, Source::ControlPoints) {
            return Ok(lm);
        }
        let d = iod * IRIS_DIAMETER_MM / IPD_MM;
        Ok(Landmarks {
            points: fitted,
            irises: [
                Iris {
                    center: right_eye,
                    diameter: d,
                },
                Iris {
                    center: left_eye,
                    diameter: d,
                },
            ],
            irises_measured: false,
            source: Source::Template,
        })
    }

    /// The face frame. The scale comes from the irises when they were measured and agree with
    /// each other and with the eye distance; otherwise from the eye distance.
    pub fn frame(&self) -> Frame {
        let [r, l] = self.irises;
        let d = l.center.minus(r.center);
        let iod = d.len().max(1.0);
        let ex = d.times(1.0 / iod);
        let by_ipd = iod / IPD_MM;
        let mean = (r.diameter + l.diameter) / 2.0;
        let by_iris = mean / IRIS_DIAMETER_MM;
        let agree = (r.diameter - l.diameter).abs() <= 0.25 * mean;
        let plausible = (0.7..=1.4).contains(&(by_iris / by_ipd));
        let px_per_mm = if self.irises_measured && agree && plausible && mean >= 6.0 {
            by_iris
        } else {
            by_ipd
        };
        Frame {
            origin: r.center.mid(l.center),
            ex,
            ey: Pt::new(-ex.y, ex.x),
            iod,
            px_per_mm,
        }
    }

    /// Centre of the subject's right eye (iris).
    pub fn right_eye(&self) -> Pt {
        self.irises[0].center
    }
    /// Centre of the subject's left eye (iris).
    pub fn left_eye(&self) -> Pt {
        self.irises[1].center
    }
    pub fn nose_tip(&self) -> Pt {
        self.points[regions::NOSE_TIP]
    }
    /// The mouth centre (between the corners).
    pub fn mouth(&self) -> Pt {
        self.points[regions::MOUTH_CORNERS[0]].mid(self.points[regions::MOUTH_CORNERS[1]])
    }
    /// Lowest point of the chin (menton).
    pub fn chin(&self) -> Pt {
        self.points[regions::MENTON]
    }
    /// This face's control points (eyes, nose tip, mouth corners), moved by `(dx, dy)`: a
    /// face found in a crop, placed in the whole picture.
    pub fn control_points(&self, (dx, dy): (f32, f32)) -> ControlPoints {
        let at = |p: Pt| [p.x + dx, p.y + dy];
        ControlPoints {
            right_eye: at(self.right_eye()),
            left_eye: at(self.left_eye()),
            nose_tip: at(self.nose_tip()),
            mouth_right: at(self.points[regions::MOUTH_CORNERS[0]]),
            mouth_left: at(self.points[regions::MOUTH_CORNERS[1]]),
            chin: None,
        }
    }
    /// The points of a group of mesh indices.
    pub fn group(&self, idx: &[usize]) -> Vec<Pt> {
        idx.iter().map(|&i| self.points[i]).collect()
    }
}

/// The face of a photo: with control points, the face they describe; else the largest face
/// detected.
pub fn locate(img: &RgbImage, cp: Option<&ControlPoints>) -> Result<Landmarks, FaceError> {
    let lm = match cp {
        Some(cp) => Landmarks::from_control_points(img, cp)?,
        None => detect(img).ok_or(FaceError::NoFace)?,
    };
    let scale = lm.frame().px_per_mm;
    if scale < MIN_PX_PER_MM {
        return Err(FaceError::TooSmall(scale));
    }
    Ok(lm)
}

/// The smallest scale a preview is made at: 0.5 px/mm is a face about 70 pixels wide (the
/// eyes 30 pixels apart), where a nose narrowed by 2 mm moves each wing by half a pixel.
/// Below it a preview would look like the photo.
pub const MIN_PX_PER_MM: f32 = 0.5;

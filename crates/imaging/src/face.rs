//! Where the face is: offline detection (SeetaFace via `rustface`, model bundled in the repo)
//! or client-given control points, reduced to six landmarks and a face frame.
//!
//! The detector gives a box, not landmarks. Landmarks come from average frontal-face
//! proportions inside the box, measured on the test portraits; clients that need precision pass
//! control points. Everything downstream works in the [`Frame`]: origin between the eyes, x
//! along the eye line, unit = inter-ocular distance (IOD), so recipes scale with the photo.

use std::sync::OnceLock;

use afterview_core::tasks::ControlPoints;
use image::RgbImage;

/// A 2-D point or vector in image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pt {
    /// x, to the right.
    pub x: f32,
    /// y, downwards.
    pub y: f32,
}

impl Pt {
    /// A point.
    pub const fn new(x: f32, y: f32) -> Self {
        Self { x, y }
    }
    /// Sum.
    pub fn plus(self, o: Pt) -> Pt {
        Pt::new(self.x + o.x, self.y + o.y)
    }
    /// Difference.
    pub fn minus(self, o: Pt) -> Pt {
        Pt::new(self.x - o.x, self.y - o.y)
    }
    /// Scaled.
    pub fn times(self, k: f32) -> Pt {
        Pt::new(self.x * k, self.y * k)
    }
    /// Length.
    pub fn len(self) -> f32 {
        (self.x * self.x + self.y * self.y).sqrt()
    }
    /// Midpoint.
    pub fn mid(self, o: Pt) -> Pt {
        Pt::new((self.x + o.x) / 2.0, (self.y + o.y) / 2.0)
    }
}

/// A detected face box.
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
    /// Detector score.
    pub score: f64,
}

/// Six facial landmarks in image pixels. "right"/"left" are the subject's (the subject's right
/// eye is on the image's left).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Landmarks {
    /// Subject's right eye centre.
    pub right_eye: Pt,
    /// Subject's left eye centre.
    pub left_eye: Pt,
    /// Nose tip.
    pub nose_tip: Pt,
    /// Subject's right mouth corner.
    pub mouth_right: Pt,
    /// Subject's left mouth corner.
    pub mouth_left: Pt,
    /// Lowest point of the chin.
    pub chin: Pt,
}

/// The face's coordinate frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    /// Between the eyes.
    pub origin: Pt,
    /// Unit vector along the eye line (towards the image's right).
    pub ex: Pt,
    /// Unit vector perpendicular to it, towards the chin.
    pub ey: Pt,
    /// Inter-ocular distance in pixels.
    pub iod: f32,
}

impl Frame {
    /// Image point at face coordinates `(u, v)` (in IOD units).
    pub fn at(&self, u: f32, v: f32) -> Pt {
        self.origin
            .plus(self.ex.times(u * self.iod))
            .plus(self.ey.times(v * self.iod))
    }

    /// A displacement of `(du, dv)` IOD units in image pixels.
    pub fn vec(&self, du: f32, dv: f32) -> Pt {
        self.ex
            .times(du * self.iod)
            .plus(self.ey.times(dv * self.iod))
    }

    /// Face coordinates of an image point.
    pub fn local(&self, p: Pt) -> (f32, f32) {
        let d = p.minus(self.origin);
        (
            (d.x * self.ex.x + d.y * self.ex.y) / self.iod,
            (d.x * self.ey.x + d.y * self.ey.y) / self.iod,
        )
    }
}

/// Why no usable face was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaceError {
    /// The detector found nothing.
    #[error("no face was detected in the photo; use a frontal photo or pass control points")]
    NoFace,
    /// The given control points cannot be a face in this image.
    #[error("invalid control points: {0}")]
    BadControlPoints(String),
}

const MODEL: &[u8] = include_bytes!("../models/seeta_fd_frontal_v1.0.bin");

fn model() -> &'static rustface::Model {
    static M: OnceLock<rustface::Model> = OnceLock::new();
    M.get_or_init(|| {
        rustface::read_model(std::io::Cursor::new(MODEL)).expect("the bundled face model is valid")
    })
}

/// Longest side the detector works on (bigger photos are downscaled first).
const DETECT_SIDE: u32 = 480;

/// Detects frontal faces, largest first.
pub fn detect_faces(img: &RgbImage) -> Vec<FaceBox> {
    let (w, h) = img.dimensions();
    let scale = (DETECT_SIDE as f32 / w.max(h) as f32).min(1.0);
    let (sw, sh) = (
        ((w as f32 * scale).round() as u32).max(1),
        ((h as f32 * scale).round() as u32).max(1),
    );
    let gray = image::imageops::grayscale(img);
    let gray = if scale < 1.0 {
        image::imageops::resize(&gray, sw, sh, image::imageops::FilterType::Triangle)
    } else {
        gray
    };
    if sw < 24 || sh < 24 {
        return vec![];
    }
    let mut det = rustface::create_detector_with_model(model().clone());
    det.set_min_face_size(24.max(sw.min(sh) / 10));
    det.set_score_thresh(2.0);
    det.set_pyramid_scale_factor(0.8);
    det.set_slide_window_step(4, 4);
    let mut faces: Vec<FaceBox> = det
        .detect(&rustface::ImageData::new(gray.as_raw(), sw, sh))
        .into_iter()
        .map(|f| {
            let b = f.bbox();
            FaceBox {
                x: b.x() as f32 / scale,
                y: b.y() as f32 / scale,
                w: b.width() as f32 / scale,
                h: b.height() as f32 / scale,
                score: f.score(),
            }
        })
        .collect();
    faces.sort_by(|a, b| {
        (b.w * b.h)
            .total_cmp(&(a.w * a.h))
            .then(b.score.total_cmp(&a.score))
    });
    faces
}

impl Landmarks {
    /// Average frontal proportions inside a SeetaFace box (the box spans roughly brows to chin).
    pub fn from_box(b: &FaceBox) -> Self {
        let p = |u: f32, v: f32| Pt::new(b.x + u * b.w, b.y + v * b.h);
        Self {
            right_eye: p(0.30, 0.38),
            left_eye: p(0.70, 0.38),
            nose_tip: p(0.50, 0.63),
            mouth_right: p(0.32, 0.81),
            mouth_left: p(0.68, 0.81),
            chin: p(0.50, 1.07),
        }
    }

    /// From client-given control points, checked against the image size.
    pub fn from_control_points(
        cp: &ControlPoints,
        width: u32,
        height: u32,
    ) -> Result<Self, FaceError> {
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
        let iod = left_eye.minus(right_eye).len();
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
        let mut lm = Self {
            right_eye,
            left_eye,
            nose_tip,
            mouth_right,
            mouth_left,
            chin: Pt::default(),
        };
        let f = lm.frame();
        let (_, nv) = f.local(nose_tip);
        let (_, mv) = f.local(mouth_right.mid(mouth_left));
        if !(0.2..=2.0).contains(&nv) || !(nv..=3.0).contains(&mv) {
            return Err(FaceError::BadControlPoints(
                "the nose must be below the eyes and the mouth below the nose".into(),
            ));
        }
        lm.chin = match cp.chin {
            Some(c) => pt("chin", c)?,
            None => f.at(0.0, mv + 0.62),
        };
        Ok(lm)
    }

    /// The face frame.
    pub fn frame(&self) -> Frame {
        let d = self.left_eye.minus(self.right_eye);
        let iod = d.len().max(1.0);
        let ex = d.times(1.0 / iod);
        Frame {
            origin: self.right_eye.mid(self.left_eye),
            ex,
            ey: Pt::new(-ex.y, ex.x),
            iod,
        }
    }

    /// The mouth centre.
    pub fn mouth(&self) -> Pt {
        self.mouth_right.mid(self.mouth_left)
    }
}

/// The face of a photo: control points when given, else the largest detected face.
pub fn locate(img: &RgbImage, cp: Option<&ControlPoints>) -> Result<Landmarks, FaceError> {
    if let Some(cp) = cp {
        return Landmarks::from_control_points(cp, img.width(), img.height());
    }
    let faces = detect_faces(img);
    let b = faces.first().ok_or(FaceError::NoFace)?;
    Ok(Landmarks::from_box(b))
}

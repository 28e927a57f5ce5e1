//! The product's tasks: names (the seed's, unchanged), queues, typed arguments and results.
//! The API enqueues these by name; the jobs crate implements them.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;
use crate::ids::UserId;

/// `generate_visualization_task` of the seed.
pub const GENERATE_VISUALIZATION: &str = "app.tasks.visualization_tasks.generate_visualization";
/// `generate_comparison_task` of the seed.
pub const GENERATE_COMPARISON: &str = "app.tasks.visualization_tasks.generate_comparison";
/// `generate_export_task` of the seed.
pub const GENERATE_EXPORT: &str = "app.tasks.export_tasks.generate_export";
/// `generate_cost_infographic_task` of the seed.
pub const GENERATE_COST_INFOGRAPHIC: &str = "app.tasks.export_tasks.generate_cost_infographic";
/// Finds the face in an uploaded photo (box, key points, outline), for clients to show what
/// the previews will work on. Not in the seed; on the visualizations queue.
pub const DETECT_FACE: &str = "afterview.detect_face";

/// Removes stored files whose records were deleted (a photo, a preview, a report) when the
/// blob store could not remove them at once: the broker keeps the request, a worker retries it
/// for about a day. Not in the seed; on the exports queue.
pub const DELETE_FILES: &str = "afterview.delete_files";

/// Queue of the visualization tasks.
pub const QUEUE_VISUALIZATIONS: &str = "visualizations";
/// Queue of the export tasks.
pub const QUEUE_EXPORTS: &str = "exports";

/// The fewest procedures in a comparison.
pub const MIN_COMPARISON: usize = 2;
/// The most procedures in a comparison.
pub const MAX_COMPARISON: usize = 4;

/// How strong a simulated change is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Intensity {
    /// A conservative change.
    Subtle,
    /// The default.
    #[default]
    Moderate,
    /// A marked change (still within what surgery can do).
    Pronounced,
}

impl Intensity {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subtle => "subtle",
            Self::Moderate => "moderate",
            Self::Pronounced => "pronounced",
        }
    }
}

/// A point in image pixels (x to the right, y down).
pub type Point = [f32; 2];

/// Explicit facial landmarks that override detection. "left"/"right" are the subject's: the
/// subject's right eye is on the image's left in a non-mirrored photo.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPoints {
    /// Centre of the subject's right eye.
    pub right_eye: Point,
    /// Centre of the subject's left eye.
    pub left_eye: Point,
    /// Tip of the nose.
    pub nose_tip: Point,
    /// The subject's right mouth corner.
    pub mouth_right: Point,
    /// The subject's left mouth corner.
    pub mouth_left: Point,
    /// Lowest point of the chin (estimated from the others when absent).
    #[serde(default)]
    pub chin: Option<Point>,
}

impl ControlPoints {
    /// Every coordinate is a finite number (a JSON number past `f32`'s range reads as
    /// infinity, which the task's message could not carry). Whether the points fit the image
    /// and describe a face is checked where the image is known, by the task.
    pub fn check(&self) -> Result<(), Invalid> {
        let named = [
            ("right_eye", Some(self.right_eye)),
            ("left_eye", Some(self.left_eye)),
            ("nose_tip", Some(self.nose_tip)),
            ("mouth_right", Some(self.mouth_right)),
            ("mouth_left", Some(self.mouth_left)),
            ("chin", self.chin),
        ];
        for (name, p) in named {
            if let Some([x, y]) = p
                && !(x.is_finite() && y.is_finite())
            {
                return Err(Invalid::new(
                    ErrorCode::InvalidControlPoints,
                    format!("control_points.{name} must be two finite pixel coordinates"),
                ));
            }
        }
        Ok(())
    }
}

impl PreviewOptions {
    /// What the API checks before sending: the control points' numbers (see
    /// [`ControlPoints::check`]).
    pub fn check(&self) -> Result<(), Invalid> {
        self.control_points
            .as_ref()
            .map_or(Ok(()), ControlPoints::check)
    }
}

/// Which engine makes the preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Offline, deterministic warping of the patient's own pixels.
    Local,
    /// Google Gemini image editing, blended back inside the treated region.
    Gemini,
}

impl EngineKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Gemini => "gemini",
        }
    }
}

/// Options of a preview.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewOptions {
    /// Strength of the change.
    #[serde(default)]
    pub intensity: Intensity,
    /// Landmarks that replace face detection.
    #[serde(default)]
    pub control_points: Option<ControlPoints>,
    /// Engine; the server's default when absent.
    #[serde(default)]
    pub engine: Option<EngineKind>,
}

/// Arguments of [`GENERATE_VISUALIZATION`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateVisualization {
    /// The uploaded photo.
    pub image_id: String,
    /// Catalog id.
    pub procedure_id: String,
    /// Options.
    #[serde(default)]
    pub options: PreviewOptions,
    /// The owner (ownership is checked against it).
    pub user_id: UserId,
}

/// Arguments of [`DETECT_FACE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectFace {
    /// The uploaded photo.
    pub image_id: String,
    /// The owner.
    pub user_id: UserId,
}

/// Arguments of [`DELETE_FILES`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteFiles {
    /// Blob keys (under `images/`, `visualizations/` or `exports/`).
    pub keys: Vec<String>,
    /// Whose they were (for the log).
    pub user_id: UserId,
}

/// Key prefixes of the files a [`DELETE_FILES`] task may remove.
pub const FILE_PREFIXES: &[&str] = &["images/", "visualizations/", "exports/", THUMBNAILS_PREFIX];

/// Key prefix of pictures' small copies (sent in [`DELETE_FILES`] tasks of their own: workers
/// older than them refuse the prefix).
pub const THUMBNAILS_PREFIX: &str = "thumbnails/";

/// Checks a comparison's procedure list: 2-4 distinct ids (the API answers 400 with this
/// message before sending the task; the task checks the same for Celery producers).
pub fn check_comparison(procedure_ids: &[String]) -> Result<(), String> {
    let distinct: std::collections::HashSet<&String> = procedure_ids.iter().collect();
    if (MIN_COMPARISON..=MAX_COMPARISON).contains(&procedure_ids.len())
        && distinct.len() == procedure_ids.len()
    {
        Ok(())
    } else {
        Err(format!(
            "a comparison needs {MIN_COMPARISON}-{MAX_COMPARISON} distinct procedures, got {procedure_ids:?}"
        ))
    }
}

/// Arguments of [`GENERATE_COMPARISON`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateComparison {
    /// The uploaded photo.
    pub image_id: String,
    /// 2-4 distinct catalog ids.
    pub procedure_ids: Vec<String>,
    /// Options (applied to each procedure).
    #[serde(default)]
    pub options: PreviewOptions,
    /// The owner.
    pub user_id: UserId,
}

/// Result of [`GENERATE_VISUALIZATION`] (and each item of a comparison).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisualizationResult {
    /// Visualization id.
    pub id: String,
    /// The photo it was made from.
    pub image_id: String,
    /// Catalog id.
    pub procedure_id: String,
    /// `local` or `gemini`.
    pub engine: String,
    /// Intensity used.
    pub intensity: Intensity,
    /// The original photo.
    pub before_image_url: String,
    /// The simulated photo.
    pub after_image_url: String,
    /// ISO-8601 UTC.
    pub generated_at: String,
}

/// Result of [`GENERATE_COMPARISON`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonResult {
    /// Comparison id (a visualization record of kind `comparison`).
    pub id: String,
    /// The photo.
    pub image_id: String,
    /// Catalog ids, in order.
    pub procedure_ids: Vec<String>,
    /// `local` or `gemini`.
    pub engine: String,
    /// One result per procedure.
    pub items: Vec<VisualizationResult>,
    /// The original photo.
    pub before_image_url: String,
    /// The labelled side-by-side composite.
    pub comparison_image_url: String,
    /// ISO-8601 UTC.
    pub generated_at: String,
}

/// URL of an uploaded photo's content.
pub fn image_url(image_id: &str) -> String {
    format!("/api/images/{image_id}/content")
}

/// URL of a visualization's picture (the after image, or a comparison's composite).
pub fn visualization_image_url(viz_id: &str) -> String {
    format!("/api/visualizations/{viz_id}/image")
}

/// URL of a photo's small copy (a JPEG of at most 256 pixels a side, for lists).
pub fn image_thumbnail_url(image_id: &str) -> String {
    format!("/api/images/{image_id}/thumbnail")
}

/// URL of a visualization picture's small copy.
pub fn visualization_thumbnail_url(viz_id: &str) -> String {
    format!("/api/visualizations/{viz_id}/thumbnail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_enums_round_trip() {
        for k in ExportFormat::ALL {
            assert_eq!(ExportFormat::parse(k.as_str()), Some(*k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert_eq!(
            VisualizationKind::parse("single"),
            Some(VisualizationKind::Single)
        );
        assert_eq!(ExportKind::parse("memo"), None);
        assert_eq!(ExportFormat::Svg.content_type(), "image/svg+xml");
    }

    #[test]
    fn export_arguments_are_checked_in_one_place() {
        let mut e = GenerateExport {
            visualization_ids: vec!["v".into()],
            format: "pdf".into(),
            include_costs: true,
            patient: None,
            paper: Some("A4".into()),
            utc_offset_minutes: Some(-420),
            user_id: UserId::parse("u").unwrap(),
        };
        assert_eq!(e.check(), Ok(PaperSize::A4));
        for bad in [-721, 841, i32::MIN] {
            e.utc_offset_minutes = Some(bad);
            assert_eq!(e.check().unwrap_err().code, ErrorCode::InvalidOptions);
        }
        e.utc_offset_minutes = None;
        e.paper = Some("legal".into());
        assert_eq!(e.check().unwrap_err().code, ErrorCode::InvalidOptions);
        e.paper = None;
        e.format = "docx".into();
        assert_eq!(
            e.check().unwrap_err().code,
            ErrorCode::UnsupportedExportFormat
        );
        e.format = "pdf".into();
        e.visualization_ids = vec![];
        assert_eq!(e.check().unwrap_err().code, ErrorCode::InvalidOptions);
        let wire = serde_json::to_value(GenerateExport {
            visualization_ids: vec!["v".into()],
            ..e
        })
        .unwrap();
        assert!(wire.get("paper").is_none(), "paper only when given: {wire}");
        assert!(wire.get("utc_offset_minutes").is_none(), "{wire}");

        let mut i = GenerateCostInfographic {
            procedure_ids: vec!["rhinoplasty".into()],
            format: "svg".into(),
            colors: Some(vec!["#000000".into(); 4]),
            user_id: UserId::parse("u").unwrap(),
        };
        assert_eq!(i.check(), Ok(ExportFormat::Svg));
        i.colors = Some(vec!["red".into(); 4]);
        assert_eq!(i.check().unwrap_err().code, ErrorCode::InvalidOptions);
        i.colors = None;
        i.format = "gif".into();
        assert_eq!(
            i.check().unwrap_err().code,
            ErrorCode::UnsupportedExportFormat
        );
    }

    #[test]
    fn arguments_read_as_the_seed_sends_them() {
        let a: GenerateVisualization = serde_json::from_str(
            r#"{"image_id": "i", "procedure_id": "rhinoplasty", "user_id": "u"}"#,
        )
        .unwrap();
        assert_eq!(a.options.intensity, Intensity::Moderate);
        let a: GenerateVisualization = serde_json::from_str(
            r#"{"image_id": "i", "procedure_id": "p", "user_id": "u",
                "options": {"intensity": "subtle", "control_points": {"right_eye": [1, 2], "left_eye": [3, 4],
                "nose_tip": [2, 5], "mouth_right": [1, 7], "mouth_left": [3, 7]}}}"#,
        )
        .unwrap();
        assert_eq!(a.options.intensity, Intensity::Subtle);
        assert_eq!(a.options.control_points.unwrap().chin, None);
        assert!(serde_json::from_str::<PreviewOptions>(r#"{"intensity": "extreme"}"#).is_err());
    }
}

/// A report's paper size. On the wire a string (`letter`, `a4`), as the seed's tasks take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaperSize {
    /// US Letter (the default).
    #[default]
    Letter,
    /// ISO A4.
    A4,
}

impl PaperSize {
    /// From the wire name (any case); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "letter" => Some(Self::Letter),
            "a4" => Some(Self::A4),
            _ => None,
        }
    }
}

/// Longest patient, clinic and surgeon field of a report, in characters.
pub const MAX_PATIENT_FIELD: usize = 200;
/// Longest notes of a report, in characters.
pub const MAX_NOTES: usize = 2000;

/// Patient and clinic fields of a report (all optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientFields {
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Date of birth.
    #[serde(default)]
    pub date_of_birth: Option<String>,
    /// Clinic.
    #[serde(default)]
    pub clinic: Option<String>,
    /// Surgeon.
    #[serde(default)]
    pub surgeon: Option<String>,
    /// Goals and notes.
    #[serde(default)]
    pub notes: Option<String>,
}

impl PatientFields {
    /// Each field within its limit ([`MAX_PATIENT_FIELD`], the notes [`MAX_NOTES`]): a report
    /// prints them whole, wrapped, so a limit keeps a page a page.
    pub fn check(&self) -> Result<(), Invalid> {
        for (name, v, max) in [
            ("name", &self.name, MAX_PATIENT_FIELD),
            ("date_of_birth", &self.date_of_birth, MAX_PATIENT_FIELD),
            ("clinic", &self.clinic, MAX_PATIENT_FIELD),
            ("surgeon", &self.surgeon, MAX_PATIENT_FIELD),
            ("notes", &self.notes, MAX_NOTES),
        ] {
            if v.as_ref().is_some_and(|s| s.chars().count() > max) {
                return Err(Invalid::new(
                    ErrorCode::FieldTooLong,
                    format!("patient.{name} is longer than {max} characters"),
                ));
            }
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

fn pdf() -> String {
    "pdf".into()
}

fn png() -> String {
    "png".into()
}

/// Arguments of [`GENERATE_EXPORT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateExport {
    /// Visualizations (singles or comparisons) to include, in order.
    pub visualization_ids: Vec<String>,
    /// Only `pdf`.
    #[serde(default = "pdf")]
    pub format: String,
    /// Print cost tables.
    #[serde(default = "yes")]
    pub include_costs: bool,
    /// Patient and clinic fields.
    #[serde(default)]
    pub patient: Option<PatientFields>,
    /// `letter` (default) or `a4`. Absent from the message when not given (the seed's task
    /// does not know it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paper: Option<String>,
    /// The clinic's offset from UTC in minutes (a browser's `-getTimezoneOffset()`), so the
    /// report is dated by the clinic's day; UTC's when absent. Absent from the message when
    /// not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset_minutes: Option<i32>,
    /// The owner.
    pub user_id: UserId,
}

/// The offsets from UTC that exist: UTC−12:00 to UTC+14:00.
pub const UTC_OFFSETS_MINUTES: std::ops::RangeInclusive<i32> = -720..=840;

/// Arguments of [`GENERATE_COST_INFOGRAPHIC`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateCostInfographic {
    /// Catalog ids.
    pub procedure_ids: Vec<String>,
    /// `png` or `svg`.
    #[serde(default = "png")]
    pub format: String,
    /// Four `#rrggbb` colours (surgeon, anesthesia, facility, other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colors: Option<Vec<String>>,
    /// The owner.
    pub user_id: UserId,
}

/// Declares a string-valued enum: serde in its wire form, `as_str`, `parse`.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $wire:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $wire)] $variant,)*
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The wire form.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire,)* }
            }

            /// From the wire form; `None` for anything else.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($wire => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// What a visualization record holds.
    VisualizationKind {
        /// One procedure's preview.
        Single => "single",
        /// Several procedures side by side.
        Comparison => "comparison",
    }
}

wire_enum! {
    /// What an export record holds.
    ExportKind {
        /// The patient report.
        Report => "report",
        /// The cost infographic.
        Infographic => "infographic",
    }
}

wire_enum! {
    /// An export's file format.
    ExportFormat {
        /// A PDF document (reports).
        Pdf => "pdf",
        /// A PNG picture (infographics).
        Png => "png",
        /// An SVG drawing (infographics).
        Svg => "svg",
    }
}

impl ExportFormat {
    /// The file's media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Pdf => "application/pdf",
            Self::Png => "image/png",
            Self::Svg => "image/svg+xml",
        }
    }
}

/// Arguments that cannot run: the code clients see, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The stable code.
    pub code: ErrorCode,
    /// For the caller.
    pub message: String,
}

impl Invalid {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Most items an export shows.
pub const MAX_EXPORT_ITEMS: usize = 8;

impl GenerateExport {
    /// What the API checks before sending and the task before running: PDF only, a known
    /// paper size, 1-8 visualizations. The paper size on success.
    pub fn check(&self) -> Result<PaperSize, Invalid> {
        if self.format != "pdf" {
            return Err(Invalid::new(
                ErrorCode::UnsupportedExportFormat,
                format!("reports are PDF; format {:?} is not supported", self.format),
            ));
        }
        let paper = match &self.paper {
            None => PaperSize::default(),
            Some(p) => PaperSize::parse(p).ok_or_else(|| {
                Invalid::new(
                    ErrorCode::InvalidOptions,
                    format!("paper must be letter or a4, got {p:?}"),
                )
            })?,
        };
        if self.visualization_ids.is_empty() || self.visualization_ids.len() > MAX_EXPORT_ITEMS {
            return Err(Invalid::new(
                ErrorCode::InvalidOptions,
                format!("a report shows 1-{MAX_EXPORT_ITEMS} visualizations"),
            ));
        }
        if let Some(p) = &self.patient {
            p.check()?;
        }
        if let Some(m) = self.utc_offset_minutes
            && !UTC_OFFSETS_MINUTES.contains(&m)
        {
            return Err(Invalid::new(
                ErrorCode::InvalidOptions,
                format!("utc_offset_minutes must be -720 to 840 (UTC-12:00 to UTC+14:00), got {m}"),
            ));
        }
        Ok(paper)
    }
}

impl GenerateCostInfographic {
    /// What the API checks before sending and the task before running: PNG or SVG, 1-8
    /// procedures, and when colours are given, four `#rrggbb` ones. The format on success.
    pub fn check(&self) -> Result<ExportFormat, Invalid> {
        let format = match ExportFormat::parse(&self.format) {
            Some(f @ (ExportFormat::Png | ExportFormat::Svg)) => f,
            _ => {
                return Err(Invalid::new(
                    ErrorCode::UnsupportedExportFormat,
                    format!("format must be png or svg, got {:?}", self.format),
                ));
            }
        };
        if self.procedure_ids.is_empty() || self.procedure_ids.len() > MAX_EXPORT_ITEMS {
            return Err(Invalid::new(
                ErrorCode::InvalidOptions,
                format!("an infographic shows 1-{MAX_EXPORT_ITEMS} procedures"),
            ));
        }
        if let Some(dup) = self
            .procedure_ids
            .iter()
            .enumerate()
            .find_map(|(i, p)| self.procedure_ids[..i].contains(p).then_some(p))
        {
            return Err(Invalid::new(
                ErrorCode::InvalidOptions,
                format!("procedure {dup:?} is listed twice; an infographic shows each once"),
            ));
        }
        let hex = |c: &String| {
            c.len() == 7 && c.starts_with('#') && c[1..].bytes().all(|b| b.is_ascii_hexdigit())
        };
        if let Some(c) = &self.colors
            && (c.len() != 4 || !c.iter().all(hex))
        {
            return Err(Invalid::new(
                ErrorCode::InvalidOptions,
                "colors must list exactly four #rrggbb colors",
            ));
        }
        Ok(format)
    }
}

/// Result of the export tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportResult {
    /// Export id.
    pub id: String,
    /// `report` or `infographic`.
    pub kind: String,
    /// `pdf`, `png`, `svg`.
    pub format: String,
    /// Where to fetch it.
    pub download_url: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// ISO-8601 UTC.
    pub created_at: String,
}

/// URL of an export's file.
pub fn export_download_url(id: &str) -> String {
    format!("/api/exports/{id}/download")
}

//! The stable error codes clients see, in task results (`error.code`) and API errors.
//! Codes never change meaning; new ones may be added.

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($variant:ident => $code:literal, $status:literal: $doc:literal,)*) => {
        /// A stable, snake_case error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $(#[doc = $doc] $variant,)*
        }

        impl ErrorCode {
            /// Every code, for documentation.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The wire form.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// What it means.
            pub fn description(self) -> &'static str {
                match self { $(ErrorCode::$variant => $doc,)* }
            }

            /// The HTTP status an API answers it with.
            pub fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// The code with this wire form.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($code => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

codes! {
    EmptyFile => "empty_file", 400: "The uploaded file is empty.",
    FileTooLarge => "file_too_large", 413: "The file is larger than the byte limit (20 MB by default).",
    UnsupportedFormat => "unsupported_format", 415: "The file is not a JPEG, PNG or WebP image (judged by content, not name).",
    ImageTooLarge => "image_too_large", 413: "The image has more pixels than the limit (40 megapixels by default); checked before decoding.",
    CorruptImage => "corrupt_image", 422: "The image could not be decoded (truncated or damaged).",
    NoFaceDetected => "no_face_detected", 422: "No face was found in the photo; use a frontal photo in which the face spans at least a tenth of the photo's width, or pass control points.",
    InvalidControlPoints => "invalid_control_points", 400: "The control points are outside the image or do not describe a face.",
    FeatureNotVisible => "feature_not_visible", 422: "The photo does not show what the procedure changes (e.g. the ears are hidden by hair for otoplasty).",
    InvalidOptions => "invalid_options", 400: "The preview options are invalid.",
    UnknownProcedure => "unknown_procedure", 422: "The procedure id is not in the catalog.",
    InvalidProcedureCount => "invalid_procedure_count", 400: "A comparison needs 2 to 4 distinct procedures.",
    ImageNotFound => "image_not_found", 404: "The image does not exist or belongs to someone else.",
    VisualizationNotFound => "visualization_not_found", 404: "The visualization does not exist or belongs to someone else.",
    ExportNotFound => "export_not_found", 404: "The export was deleted while its task saved it.",
    UnsupportedExportFormat => "unsupported_export_format", 422: "The export format is not supported.",
    FieldTooLong => "field_too_long", 400: "A text field of the report (patient, clinic, surgeon: 200 characters; notes: 2000) is over its limit.",
    GeminiNotConfigured => "gemini_not_configured", 501: "The Gemini engine was chosen but no API key is configured.",
    GeminiAuth => "gemini_auth", 502: "Gemini rejected the API key or the request's permissions.",
    GeminiBlocked => "gemini_blocked", 422: "Gemini refused to generate this preview (safety filters).",
    GeminiNoImage => "gemini_no_image", 502: "Gemini answered without an image.",
    GeminiQuotaExhausted => "gemini_quota_exhausted", 429: "The Gemini quota is exhausted (daily quota, or retries ran out).",
    GeminiUnavailable => "gemini_unavailable", 503: "Gemini failed or timed out after retries.",
    GeminiBadResponse => "gemini_bad_response", 502: "Gemini's answer could not be understood.",
    StorageUnavailable => "storage_unavailable", 503: "The metadata or blob store failed.",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate {}", c.as_str());
            assert!(
                c.as_str()
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '_')
            );
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }
}

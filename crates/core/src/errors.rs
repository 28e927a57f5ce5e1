//! The stable error codes clients see, in task results (`error.code`) and API errors.
//! Codes never change meaning; new ones may be added.

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($variant:ident => $code:literal: $doc:literal,)*) => {
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
        }
    };
}

codes! {
    EmptyFile => "empty_file": "The uploaded file is empty.",
    FileTooLarge => "file_too_large": "The file is larger than the byte limit (20 MB by default).",
    UnsupportedFormat => "unsupported_format": "The file is not a JPEG, PNG or WebP image (judged by content, not name).",
    ImageTooLarge => "image_too_large": "The image has more pixels than the limit (40 megapixels by default); checked before decoding.",
    CorruptImage => "corrupt_image": "The image could not be decoded (truncated or damaged).",
    NoFaceDetected => "no_face_detected": "No face was found in the photo; pass control points or use a frontal photo.",
    InvalidControlPoints => "invalid_control_points": "The control points are outside the image or do not describe a face.",
    FeatureNotVisible => "feature_not_visible": "The photo does not show what the procedure changes (e.g. the ears are hidden by hair for otoplasty).",
    InvalidOptions => "invalid_options": "The preview options are invalid.",
    UnknownProcedure => "unknown_procedure": "The procedure id is not in the catalog.",
    InvalidProcedureCount => "invalid_procedure_count": "A comparison needs 2 to 4 distinct procedures.",
    ImageNotFound => "image_not_found": "The image does not exist or belongs to someone else.",
    VisualizationNotFound => "visualization_not_found": "The visualization does not exist or belongs to someone else.",
    UnsupportedExportFormat => "unsupported_export_format": "The export format is not supported.",
    GeminiNotConfigured => "gemini_not_configured": "The Gemini engine was chosen but no API key is configured.",
    GeminiAuth => "gemini_auth": "Gemini rejected the API key or the request's permissions.",
    GeminiBlocked => "gemini_blocked": "Gemini refused to generate this preview (safety filters).",
    GeminiNoImage => "gemini_no_image": "Gemini answered without an image.",
    GeminiQuotaExhausted => "gemini_quota_exhausted": "The Gemini quota is exhausted (daily quota, or retries ran out).",
    GeminiUnavailable => "gemini_unavailable": "Gemini failed or timed out after retries.",
    GeminiBadResponse => "gemini_bad_response": "Gemini's answer could not be understood.",
    StorageUnavailable => "storage_unavailable": "The metadata or blob store failed.",
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

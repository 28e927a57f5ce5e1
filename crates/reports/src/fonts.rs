//! The faces a report's text is set in: the bundled DejaVu Sans (Latin, Greek, Cyrillic,
//! Hebrew, Arabic, …), then fallback faces the operator names for the scripts DejaVu lacks
//! (Chinese, Japanese, Korean, Thai, …). A patient's name or notes in such a script would
//! otherwise print as empty boxes.
//!
//! Invariants: each character is set in the first face that has a glyph for it, DejaVu first,
//! so a report without such characters is the same with or without fallbacks; a character no
//! face has stays with DejaVu (its "missing glyph" box), and [`Fonts::missing`] counts those;
//! measuring and drawing pick faces the same way, so a line is exactly as wide as it was laid
//! out.

use std::sync::{Arc, OnceLock};

use ab_glyph::{Font as _, FontVec, PxScale};
use afterview_imaging::render::font as bundled;

use crate::ReportError;

/// A fallback face's bytes, shared by the measuring font and the PDF writer (a CJK face is
/// 4-20 MB: one copy).
struct Shared(FontVec);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

#[derive(Clone)]
struct Fallback {
    name: String,
    face: Arc<Shared>,
    pdf: krilla::text::Font,
}

/// The bundled faces and the fallbacks, in the order they are tried. Cheap to clone.
#[derive(Clone, Default)]
pub struct Fonts(Arc<Vec<Fallback>>);

impl std::fmt::Debug for Fonts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.fallback_names()).finish()
    }
}

/// Which face sets a run: the bundled one of the run's weight, or fallback `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Face {
    Bundled,
    Fallback(usize),
}

/// The advance of `text` at `size` points in `f` (sized in em units, as PDF fonts are).
fn advance(f: &impl ab_glyph::Font, text: &str, size: f32) -> f32 {
    let scale = PxScale::from(size * f.height_unscaled() / f.units_per_em().unwrap_or(1000.0));
    afterview_imaging::render::advance(f, text, scale)
}

impl Fonts {
    /// The bundled faces alone.
    pub fn bundled() -> Self {
        Self::default()
    }

    /// The bundled faces alone, shared (what the infographic and [`crate::render_report`]
    /// use).
    pub(crate) fn bundled_ref() -> &'static Self {
        static F: OnceLock<Fonts> = OnceLock::new();
        F.get_or_init(Self::bundled)
    }

    /// Adds a fallback face: a TrueType or OpenType file (of a collection, `.ttc`, its first
    /// face). `name` says where it came from, in errors and in [`Fonts::fallback_names`].
    pub fn with_fallback(self, name: &str, bytes: Vec<u8>) -> Result<Self, ReportError> {
        let bad = || ReportError::Invalid(format!("{name} is not a TrueType or OpenType font"));
        let face = Arc::new(Shared(FontVec::try_from_vec(bytes).map_err(|_| bad())?));
        let data: Arc<dyn AsRef<[u8]> + Send + Sync> = face.clone();
        let pdf = krilla::text::Font::new(data.into(), 0).ok_or_else(bad)?;
        let mut all = self.0.to_vec();
        all.push(Fallback {
            name: name.to_owned(),
            face,
            pdf,
        });
        Ok(Self(Arc::new(all)))
    }

    /// The fallbacks' names, in the order they are tried.
    pub fn fallback_names(&self) -> Vec<&str> {
        self.0.iter().map(|f| f.name.as_str()).collect()
    }

    /// How many characters of `text` no face has a glyph for (they print as boxes).
    pub fn missing(&self, text: &str) -> usize {
        text.chars()
            .filter(|&c| !c.is_whitespace() && !c.is_control() && self.face_of(c, false).is_none())
            .count()
    }

    /// The first face with a glyph for `c`; `None` when none has one.
    fn face_of(&self, c: char, bold: bool) -> Option<Face> {
        if bundled(bold).glyph_id(c).0 != 0 {
            return Some(Face::Bundled);
        }
        self.0
            .iter()
            .position(|f| f.face.0.glyph_id(c).0 != 0)
            .map(Face::Fallback)
    }

    /// `text` cut into runs each set in one face, in reading order. Spaces join the run they
    /// follow (every face has one), so a line of one script stays one run.
    pub(crate) fn runs<'t>(&self, text: &'t str, bold: bool) -> Vec<(&'t str, Face)> {
        if self.0.is_empty() {
            return vec![(text, Face::Bundled)];
        }
        let mut out: Vec<(&'t str, Face)> = vec![];
        let mut start = 0;
        let mut current: Option<Face> = None;
        for (i, c) in text.char_indices() {
            let face = if c.is_whitespace() {
                current.unwrap_or(Face::Bundled)
            } else {
                self.face_of(c, bold).unwrap_or(Face::Bundled)
            };
            match current {
                Some(f) if f != face => {
                    out.push((&text[start..i], f));
                    start = i;
                }
                _ => {}
            }
            current = Some(face);
        }
        if let Some(f) = current {
            out.push((&text[start..], f));
        }
        out
    }

    /// The width of `text` in points at `size`, each run in its face.
    pub(crate) fn width(&self, text: &str, size: f32, bold: bool) -> f32 {
        self.runs(text, bold)
            .into_iter()
            .map(|(run, face)| self.run_width(run, face, size, bold))
            .sum()
    }

    /// The width of one run set in `face`.
    pub(crate) fn run_width(&self, run: &str, face: Face, size: f32, bold: bool) -> f32 {
        match face {
            Face::Bundled => advance(bundled(bold), run, size),
            Face::Fallback(i) => advance(&self.0[i].face.0, run, size),
        }
    }

    /// The PDF writer's font for `face`; the bundled ones are given.
    pub(crate) fn pdf_font<'a>(
        &'a self,
        face: Face,
        bundled: &'a krilla::text::Font,
    ) -> &'a krilla::text::Font {
        match face {
            Face::Bundled => bundled,
            Face::Fallback(i) => &self.0[i].pdf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Face, Fonts};

    /// A face that is not a font is refused with its name; the bundled faces alone cover
    /// Latin and Hebrew but not Chinese.
    #[test]
    fn fallbacks_are_checked_and_bundled_faces_come_first() {
        let err = Fonts::bundled()
            .with_fallback("/tmp/notes.txt", b"not a font".to_vec())
            .unwrap_err();
        assert!(err.to_string().contains("/tmp/notes.txt"), "{err}");
        let f = Fonts::bundled();
        assert_eq!(f.missing("Jane Q. Patient, כהן"), 0);
        assert_eq!(f.missing("王 小明"), 3);
        assert_eq!(f.runs("王 小明", false), [("王 小明", Face::Bundled)]);
    }
}

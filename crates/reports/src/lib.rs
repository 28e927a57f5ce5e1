//! The patient report (PDF) and the cost infographic (SVG and PNG).
//!
//! Job: values and pictures in, bytes out. Pure and synchronous: no tokio, no HTTP, no SQL.
//! Fonts are the bundled DejaVu faces, then the fallback faces the caller gives for scripts
//! DejaVu lacks ([`Fonts`]; nothing is looked up or downloaded here); pages are laid out by a
//! small flow engine ([`layout`]) and written with `krilla`, which subsets and embeds the fonts
//! (with ToUnicode maps, so the text can be extracted and searched).
//!
//! Invariants: the same input gives the same PDF apart from its creation date; every page
//! carries the reference, the date and "page i of n"; every picture of a simulated result is
//! labelled as a simulation; the disclaimer is always included.

pub mod fonts;
pub mod infographic;
mod layout;
pub mod report;

pub use fonts::Fonts;
pub use infographic::{InfographicInput, infographic_png, infographic_svg};
pub use report::{Paper, Patient, ReportInput, ReportItem, render_report, render_report_with};

/// What can go wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    /// A picture could not be read.
    #[error("a picture could not be read: {0}")]
    Picture(String),
    /// The PDF writer failed.
    #[error("the PDF could not be written: {0}")]
    Pdf(String),
    /// The input is unusable (no procedures, bad colors...).
    #[error("{0}")]
    Invalid(String),
}

/// The disclaimer printed in every report and under every infographic.
pub const DISCLAIMER: &str = "Simulated images are for illustration and communication only and are not a guarantee or \
prediction of your results. Individual results vary with anatomy, skin, healing and adherence to post-operative \
instructions. No warranty is expressed or implied by the use of imaging. This document does not provide medical \
advice or diagnosis; a consultation and examination by a board-certified plastic surgeon is required to determine \
candidacy. Costs are estimates from national averages; your surgeon's quote will differ by region, surgeon and case.";

/// Formats whole currency units with thousands separators: `$12,200`.
pub fn money(amount: u32, currency: &str) -> String {
    let digits = amount.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    match currency {
        "USD" => format!("${out}"),
        "EUR" => format!("€{out}"),
        "GBP" => format!("£{out}"),
        other => format!("{out} {other}"),
    }
}

/// `$6,550 – $12,200`.
pub fn range(r: afterview_core::catalog::CostRange, currency: &str) -> String {
    if r.low == r.high {
        money(r.low, currency)
    } else {
        format!("{} – {}", money(r.low, currency), money(r.high, currency))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_grouped() {
        assert_eq!(money(12200, "USD"), "$12,200");
        assert_eq!(money(950, "USD"), "$950");
        assert_eq!(money(1234567, "CHF"), "1,234,567 CHF");
    }
}

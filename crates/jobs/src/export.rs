//! `generate_export` (the patient report, PDF) and `generate_cost_infographic` (PNG or SVG):
//! progress 10 → 30 → 90 → 100 as the seed. Nothing is stored until the file is complete.

use std::collections::HashSet;
use std::sync::Arc;

use afterview_core::ErrorCode;
use afterview_core::catalog::Procedure;
use afterview_core::tasks::{
    ExportResult, GenerateCostInfographic, GenerateExport, PaperSize, QUEUE_EXPORTS,
    export_download_url,
};
use afterview_engine::{Task, TaskContext, TaskError, TaskOptions};
use afterview_imaging::intake::decode_png;
use afterview_imaging::{face, face_window};
use afterview_reports::infographic::DEFAULT_COLORS;
use afterview_reports::report::fit_to_print;
use afterview_reports::{InfographicInput, Paper, Patient, ReportInput, ReportItem};
use afterview_store::{
    ExportFormat, ExportKind, ExportRecord, StoreError, VisualizationKind, VisualizationRecord,
    export_key,
};
use bytes::Bytes;
use chrono::Utc;
use image::RgbImage;
use serde_json::Value;

use crate::visualize::load_photo;
use crate::{Deps, derived_id, fail, storage};

/// Most visualizations in one report.
const MAX_REPORT_ITEMS: usize = 8;

fn options() -> TaskOptions {
    TaskOptions {
        queue: QUEUE_EXPORTS.into(),
        ..TaskOptions::default()
    }
}

/// `app.tasks.export_tasks.generate_export`.
#[derive(Debug, Clone)]
pub struct GenerateExportTask(pub Arc<Deps>);

/// `app.tasks.export_tasks.generate_cost_infographic`.
#[derive(Debug, Clone)]
pub struct GenerateCostInfographicTask(pub Arc<Deps>);

fn procedure(d: &Deps, id: &str) -> Result<Procedure, TaskError> {
    d.catalog.get(id).cloned().ok_or_else(|| {
        fail(
            ErrorCode::UnknownProcedure,
            format!("unknown procedure {id:?}"),
        )
    })
}

async fn owned_viz(d: &Deps, owner: &str, id: &str) -> Result<VisualizationRecord, TaskError> {
    d.meta
        .get_visualization(owner, id)
        .await
        .map_err(storage)?
        .ok_or_else(|| {
            fail(
                ErrorCode::VisualizationNotFound,
                format!("visualization {id} not found"),
            )
        })
}

/// The single visualizations a request names (a comparison contributes its items).
async fn singles(
    d: &Deps,
    owner: &str,
    ids: &[String],
) -> Result<Vec<VisualizationRecord>, TaskError> {
    let mut out: Vec<VisualizationRecord> = vec![];
    let mut seen = HashSet::new();
    for id in ids {
        let rec = owned_viz(d, owner, id).await?;
        let members: Vec<VisualizationRecord> = if rec.kind == VisualizationKind::Comparison {
            let item_ids: Vec<String> = rec.result["items"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let mut v = vec![];
            for iid in item_ids {
                v.push(owned_viz(d, owner, &iid).await?);
            }
            v
        } else {
            vec![rec]
        };
        for m in members {
            if seen.insert(m.id.clone()) {
                out.push(m);
            }
        }
    }
    if out.len() > MAX_REPORT_ITEMS {
        return Err(fail(
            ErrorCode::InvalidOptions,
            format!("a report holds at most {MAX_REPORT_ITEMS} previews"),
        ));
    }
    Ok(out)
}

async fn picture(d: &Deps, ctx: &TaskContext, key: &str) -> Result<Arc<RgbImage>, TaskError> {
    let bytes = d.blobs.get(key).await.map_err(storage)?.ok_or_else(|| {
        fail(
            ErrorCode::VisualizationNotFound,
            "a picture of the visualization is missing",
        )
    })?;
    let img = ctx
        .blocking(move |_| decode_png(&bytes))
        .await?
        .map_err(|e| fail(e.code(), e.to_string()))?;
    Ok(Arc::new(img))
}

/// Crops a before/after pair to the face (same window for both, the face cheek to cheek
/// at least 40 % of its width), when a face is found. The after picture's `label` (stamped in
/// the full picture's corner, which the crop cuts off) is stamped again on the crop: every
/// simulated picture in the report says it is one.
///
/// Both come back no larger than the report prints them ([`fit_to_print`]): a report holds
/// every item's pair until it renders, and eight procedures on a 40 MP photo kept at full
/// resolution were about 2 GB at once.
fn face_crop(before: &RgbImage, after: &RgbImage, label: Option<&str>) -> (RgbImage, RgbImage) {
    let window = treated_face(before, after, label)
        .map(|lm| face_window(&lm, before.width(), before.height(), 0.7, 0.82));
    let fit = |img: &RgbImage| {
        let img = match window {
            Some(r) => image::imageops::crop_imm(img, r.x0, r.y0, r.width(), r.height()).to_image(),
            None => img.clone(),
        };
        fit_to_print(&img).unwrap_or(img)
    };
    let mut after_crop = fit(after);
    let corner_kept = window.is_none_or(|r| r.x1 >= after.width() && r.y1 >= after.height());
    if let Some(l) = label.filter(|_| !corner_kept) {
        afterview_imaging::render::label(&mut after_crop, l);
    }
    (fit(before), after_crop)
}

/// The face the preview changed: of the faces in the photo, the one whose outline holds the
/// most pixels that differ between the pair (a preview made with control points may have
/// treated a smaller face than the largest, which the report then showed unchanged); the
/// largest when nothing differs there. Only the face's own box counts, not its window, and
/// never the SIMULATION label's corner (stamped on every preview: it would count for a face
/// near it).
fn treated_face(
    before: &RgbImage,
    after: &RgbImage,
    label: Option<&str>,
) -> Option<face::Landmarks> {
    let faces = face::detect_all(before);
    if faces.len() < 2 || before.dimensions() != after.dimensions() {
        return faces.into_iter().next();
    }
    let (w, h) = before.dimensions();
    let stamped = label.map(|l| afterview_imaging::render::label_rect(w, h, l));
    let changed = |lm: &face::Landmarks| {
        let oval = lm.group(&face::regions::FACE_OVAL);
        let (x0, x1) = oval
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p.x), b.max(p.x)));
        let (y0, y1) = oval
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p.y), b.max(p.y)));
        let clamp = |v: f32, hi: u32| (v.max(0.0) as u32).min(hi);
        let mut n = 0u64;
        for y in clamp(y0, h)..clamp(y1, h) {
            for x in clamp(x0, w)..clamp(x1, w) {
                if stamped.is_some_and(|r| r.contains(x, y)) {
                    continue;
                }
                let (a, b) = (before.get_pixel(x, y).0, after.get_pixel(x, y).0);
                if (0..3).any(|c| a[c].abs_diff(b[c]) > 8) {
                    n += 1;
                }
            }
        }
        n
    };
    let counts: Vec<u64> = faces.iter().map(changed).collect();
    let best = (0..faces.len()).max_by_key(|&i| (counts[i], std::cmp::Reverse(i)))?;
    faces.into_iter().nth(best)
}

/// The report's date: the clinic's day when its offset from UTC is known, else UTC's.
fn report_date(now: chrono::DateTime<Utc>, utc_offset_minutes: Option<i32>) -> String {
    let local = now + chrono::Duration::minutes(i64::from(utc_offset_minutes.unwrap_or(0)));
    local.format("%Y-%m-%d").to_string()
}

/// The report's patient fields (their lengths were checked with the arguments).
fn patient(p: Option<afterview_core::tasks::PatientFields>) -> Patient {
    let p = p.unwrap_or_default();
    Patient {
        name: p.name,
        date_of_birth: p.date_of_birth,
        clinic: p.clinic,
        surgeon: p.surgeon,
        notes: p.notes,
    }
}

/// Saves the file and its record; a re-run of the same task returns the stored result. A run
/// stopped while it saves leaves no record ([`Unsaved`](crate::unsaved::Unsaved)).
async fn save_export(
    d: &Deps,
    ctx: &TaskContext,
    owner: &str,
    what: (ExportKind, ExportFormat),
    bytes: Vec<u8>,
    image_ids: Vec<String>,
) -> Result<Value, TaskError> {
    let mut guard = crate::unsaved::Unsaved::new();
    let out = save_export_on(d, ctx, owner, what, bytes, image_ids, &mut guard).await;
    guard.disarm();
    out
}

async fn save_export_on(
    d: &Deps,
    ctx: &TaskContext,
    owner: &str,
    (kind, format): (ExportKind, ExportFormat),
    bytes: Vec<u8>,
    image_ids: Vec<String>,
    guard: &mut crate::unsaved::Unsaved,
) -> Result<Value, TaskError> {
    // Revoked while the file was made: nothing is saved; the task ends REVOKED.
    crate::revoked(ctx)?;
    let id = derived_id(ctx.id(), 0);
    let key = export_key(&id, format.as_str());
    let size = bytes.len() as u64;
    let result = ExportResult {
        id: id.clone(),
        kind: kind.as_str().into(),
        format: format.as_str().into(),
        download_url: export_download_url(&id),
        size_bytes: size,
        created_at: crate::stamp(),
    };
    let value = serde_json::to_value(&result).expect("results serialize");
    let rec = ExportRecord {
        id: id.clone(),
        owner: owner.into(),
        kind,
        format,
        blob_key: key,
        size,
        image_ids,
        result: value.clone(),
        task_id: Some(ctx.id().to_owned()),
        created_at: Utc::now(),
    };
    // As `save_owned` in visualize.rs: the record claims the id first (another user's id is
    // refused before the file is touched), the photos are checked before and after the record
    // and after the file, which is written last; the record is read again after the file (the
    // export deleted meanwhile: its file goes too).
    let photos_gone = || any_photo_gone(d, owner, &rec.image_ids);
    let gone = || {
        fail(
            ErrorCode::ImageNotFound,
            "a photo of the report was deleted while it was made",
        )
    };
    if photos_gone().await? {
        return Err(gone());
    }
    let (inserted, stored) = claim_export(d, ctx, &rec).await?;
    let what = (crate::unsaved::Kind::Export, owner, &*id, &*rec.blob_key);
    if inserted {
        guard.arm(d, ctx, what);
    }
    let write = async {
        d.blobs
            .put(&rec.blob_key, Bytes::from(bytes))
            .await
            .map_err(storage)
    };
    crate::unsaved::write_file(d, (what, inserted), photos_gone, gone, write).await?;
    Ok(stored.unwrap_or(value))
}

/// Whether any of `ids` is no longer the owner's photo.
async fn any_photo_gone(d: &Deps, owner: &str, ids: &[String]) -> Result<bool, TaskError> {
    for id in ids {
        if d.meta
            .get_image(owner, id)
            .await
            .map_err(storage)?
            .is_none()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Inserts the export's record, claiming its id: `(true, None)` when new; `(false, Some(the
/// earlier result))` when a previous run of this task made it; refused when the id is another
/// user's.
async fn claim_export(
    d: &Deps,
    ctx: &TaskContext,
    rec: &ExportRecord,
) -> Result<(bool, Option<Value>), TaskError> {
    match d.meta.insert_export(rec).await {
        Ok(()) => Ok((true, None)),
        Err(StoreError::Conflict(_)) => match d
            .meta
            .get_export(&rec.owner, &rec.id)
            .await
            .map_err(storage)?
        {
            Some(existing) => Ok((false, Some(existing.result))),
            None => {
                tracing::warn!(task_id = %ctx.id(), owner = %rec.owner, "A task names another user's export; refused (a forged broker message?).");
                Err(TaskError::invalid_arguments(format!(
                    "export {} belongs to another user; refused",
                    rec.id
                )))
            }
        },
        Err(e) => Err(storage(e)),
    }
}

/// The report's reference code: the last 8 characters of its id, upper-cased. Ids are
/// time-ordered (UUID v7), so their first characters are shared by every report of the same minute.
fn short_reference(id: &str) -> String {
    id[id.len().saturating_sub(8)..].to_uppercase()
}

/// Arguments the shared checks refuse.
fn invalid(e: afterview_core::tasks::Invalid) -> TaskError {
    fail(e.code, e.message)
}

impl Task for GenerateExportTask {
    const NAME: &'static str = afterview_core::tasks::GENERATE_EXPORT;
    type Args = GenerateExport;
    type Output = Value;

    fn options(&self) -> TaskOptions {
        options()
    }

    async fn run(&self, ctx: TaskContext, a: GenerateExport) -> Result<Value, TaskError> {
        let d = &self.0;
        ctx.progress(10, "Loading visualizations").await;
        let paper = match a.check().map_err(invalid)? {
            PaperSize::Letter => Paper::Letter,
            PaperSize::A4 => Paper::A4,
        };
        let patient = patient(a.patient);
        let vizs = singles(d, &a.user_id, &a.visualization_ids).await?;
        let mut items = vec![];
        let mut image_ids = vec![];
        for v in &vizs {
            let proc_id = v.procedure_ids.first().cloned().unwrap_or_default();
            let procedure = procedure(d, &proc_id)?;
            let before = load_photo(d, &ctx, &a.user_id, &v.image_id).await?;
            let after = picture(d, &ctx, &v.blob_key).await?;
            let label = d.preview.label.clone();
            let (before, after) = ctx
                .blocking(move |_| face_crop(&before, &after, label.as_deref()))
                .await?;
            if !image_ids.contains(&v.image_id) {
                image_ids.push(v.image_id.clone());
            }
            items.push(ReportItem {
                procedure,
                intensity: v.result["intensity"]
                    .as_str()
                    .unwrap_or("moderate")
                    .to_owned(),
                engine: v.engine.as_str().into(),
                before: Arc::new(before),
                after: Arc::new(after),
                visualization_id: v.id.clone(),
            });
        }
        ctx.progress(30, "Generating report").await;
        let input = ReportInput {
            reference: short_reference(&derived_id(ctx.id(), 0)),
            date: report_date(Utc::now(), a.utc_offset_minutes),
            paper,
            patient,
            include_costs: a.include_costs,
            currency: d.catalog.currency.clone(),
            cost_disclaimer: d.catalog.disclaimer.clone(),
            items,
        };
        let fonts = d.report_fonts.clone();
        warn_of_missing_glyphs(&fonts, &input.patient, ctx.id());
        let pdf = ctx
            .blocking(move |_| afterview_reports::render_report_with(&input, &fonts))
            .await?
            .map_err(|e| fail(ErrorCode::InvalidOptions, e.to_string()))?;
        ctx.progress(90, "Saving report").await;
        let result = save_export(
            d,
            &ctx,
            &a.user_id,
            (ExportKind::Report, ExportFormat::Pdf),
            pdf,
            image_ids,
        )
        .await?;
        ctx.progress(100, "Report complete").await;
        Ok(result)
    }
}

impl Task for GenerateCostInfographicTask {
    const NAME: &'static str = afterview_core::tasks::GENERATE_COST_INFOGRAPHIC;
    type Args = GenerateCostInfographic;
    type Output = Value;

    fn options(&self) -> TaskOptions {
        options()
    }

    async fn run(&self, ctx: TaskContext, a: GenerateCostInfographic) -> Result<Value, TaskError> {
        let d = &self.0;
        ctx.progress(10, "Loading procedures").await;
        let format = a.check().map_err(invalid)?;
        let procedures = a
            .procedure_ids
            .iter()
            .map(|p| procedure(d, p))
            .collect::<Result<Vec<_>, _>>()?;
        let colors: [String; 4] = match a.colors {
            None => DEFAULT_COLORS.map(String::from),
            Some(c) => c
                .try_into()
                .map_err(|_| fail(ErrorCode::InvalidOptions, "colors must list four colors"))?,
        };
        let input = InfographicInput {
            procedures,
            currency: d.catalog.currency.clone(),
            colors,
        };
        input
            .validate()
            .map_err(|e| fail(ErrorCode::InvalidOptions, e.to_string()))?;
        ctx.progress(30, "Drawing infographic").await;
        let bytes = ctx
            .blocking(move |_| {
                if format == ExportFormat::Svg {
                    afterview_reports::infographic_svg(&input).map(String::into_bytes)
                } else {
                    afterview_reports::infographic_png(&input)
                }
            })
            .await?
            .map_err(|e| fail(ErrorCode::InvalidOptions, e.to_string()))?;
        ctx.progress(90, "Saving infographic").await;
        let result = save_export(
            d,
            &ctx,
            &a.user_id,
            (ExportKind::Infographic, format),
            bytes,
            vec![],
        )
        .await?;
        ctx.progress(100, "Infographic complete").await;
        Ok(result)
    }
}

/// Logs how many characters of the patient's fields no report font has (they print as boxes):
/// counted, never quoted, as the fields are the patient's.
fn warn_of_missing_glyphs(fonts: &afterview_reports::Fonts, p: &Patient, task_id: &str) {
    let missing: usize = [&p.name, &p.clinic, &p.surgeon, &p.notes, &p.date_of_birth]
        .into_iter()
        .flatten()
        .map(|t| fonts.missing(t))
        .sum();
    if missing > 0 {
        tracing::warn!(
            task_id,
            characters = missing,
            "A report has characters no font covers; they print as boxes. Install fonts-noto-cjk or name a font that has them in AFTERVIEW_REPORT_FONTS."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use afterview_reports::report::PICTURE_SIDE;

    #[test]
    fn a_report_keeps_its_pictures_no_larger_than_it_prints_them() {
        // No face here: the whole picture, scaled down, its proportions kept.
        let big = RgbImage::from_pixel(3000, 1800, image::Rgb([180, 140, 120]));
        let (before, after) = face_crop(&big, &big, None);
        for img in [&before, &after] {
            assert_eq!(img.dimensions(), (PICTURE_SIDE, 540));
        }
        let small = RgbImage::from_pixel(400, 300, image::Rgb([180, 140, 120]));
        assert_eq!(face_crop(&small, &small, None).0.dimensions(), (400, 300));
    }

    /// The crop to the face cuts off the corner where the preview's label was stamped: the
    /// report's after picture is labelled again (only the after picture).
    #[test]
    fn a_reports_after_picture_keeps_its_simulation_label() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/portraits/astronaut.png"
        ))
        .unwrap();
        let portrait = afterview_imaging::intake::decode_upright(
            &bytes,
            &afterview_imaging::intake::Limits::default(),
        )
        .unwrap()
        .0;
        // In the middle of a larger photo: the crop to the face leaves its corners out.
        let mut photo = RgbImage::from_pixel(1400, 1400, image::Rgb([90, 110, 130]));
        image::imageops::replace(&mut photo, &portrait, 444, 444);
        let (before, after) = face_crop(&photo, &photo, Some("SIMULATION"));
        let (w, h) = after.dimensions();
        let changed: Vec<(u32, u32)> = after
            .enumerate_pixels()
            .filter(|(x, y, p)| *p != before.get_pixel(*x, *y))
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(changed.len() > 500, "labelled: {} pixels", changed.len());
        assert!(
            changed.iter().all(|(x, y)| *x > w / 3 && *y > h / 2),
            "only in the bottom right corner: {w}x{h}, from {:?}",
            (
                changed.iter().map(|c| c.0).min(),
                changed.iter().map(|c| c.1).min()
            )
        );
        let (_, plain) = face_crop(&photo, &photo, None);
        assert_eq!(plain, before, "no label configured: no label");
    }

    /// Two people in the photo, the preview made (with control points) on the smaller face:
    /// the report shows that face, changed, not the larger one unchanged.
    #[test]
    fn a_reports_pictures_show_the_face_the_preview_changed() {
        use afterview_core::tasks::Intensity;
        let read = |name: &str| {
            let bytes = std::fs::read(format!(
                "{}/../../testdata/portraits/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            afterview_imaging::intake::decode_upright(
                &bytes,
                &afterview_imaging::intake::Limits::default(),
            )
            .unwrap()
            .0
        };
        let big = image::imageops::resize(
            &read("astronaut.png"),
            700,
            700,
            image::imageops::FilterType::Triangle,
        );
        let hopper = read("grace_hopper.jpg");
        let small = image::imageops::resize(
            &hopper,
            hopper.width() / 2,
            hopper.height() / 2,
            image::imageops::FilterType::Triangle,
        );
        let mut photo = RgbImage::from_pixel(1100, 720, image::Rgb([128, 128, 128]));
        image::imageops::replace(&mut photo, &big, 0, 10);
        let (ox, oy) = (780.0, 200.0);
        image::imageops::replace(&mut photo, &small, ox as i64, oy as i64);
        let cp = face::detect(&small).unwrap().control_points((ox, oy));
        let lm = face::locate(&photo, Some(&cp)).unwrap();
        let after = afterview_imaging::simulate(&photo, "rhinoplasty", Intensity::Pronounced, &lm)
            .unwrap()
            .image;
        let (b, a) = face_crop(&photo, &after, None);
        let differing = b
            .enumerate_pixels()
            .filter(|(x, y, p)| (0..3).any(|c| p.0[c].abs_diff(a.get_pixel(*x, *y).0[c]) > 8))
            .count();
        assert!(
            differing > 50,
            "the change shows in the report's pictures ({differing} pixels)"
        );

        // The larger face treated, the smaller in the corner where the label is stamped.
        let mut photo = RgbImage::from_pixel(1100, 720, image::Rgb([128, 128, 128]));
        image::imageops::replace(&mut photo, &big, 0, 10);
        image::imageops::replace(&mut photo, &small, 1100 - 256, 720 - 300);
        let lm = face::detect(&photo).unwrap();
        assert!(lm.nose_tip().x < 700.0, "the larger face");
        let mut after =
            afterview_imaging::simulate(&photo, "rhinoplasty", Intensity::Pronounced, &lm)
                .unwrap()
                .image;
        afterview_imaging::render::label(&mut after, "SIMULATION");
        let chosen = treated_face(&photo, &after, Some("SIMULATION")).unwrap();
        assert!(
            chosen.nose_tip().x < 700.0,
            "the treated larger face is shown"
        );
    }

    #[test]
    fn reports_are_dated_by_the_clinics_day() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-07T01:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(report_date(t, None), "2026-12-07");
        assert_eq!(report_date(t, Some(-480)), "2026-12-06", "Los Angeles");
        assert_eq!(report_date(t, Some(540)), "2026-12-07", "Tokyo");
        let evening = t + chrono::Duration::hours(20);
        assert_eq!(report_date(evening, Some(540)), "2026-12-08");
    }

    #[test]
    fn reports_made_in_the_same_minute_get_different_references() {
        let a = short_reference(&derived_id(&afterview_engine::message::new_id(), 0));
        let b = short_reference(&derived_id(&afterview_engine::message::new_id(), 0));
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
        assert_eq!(a, a.to_uppercase());
    }
}

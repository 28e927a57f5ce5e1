//! `generate_visualization` and `generate_comparison`: progress 0 → 20 → 80 → 100 as the seed.

use std::sync::Arc;

use afterview_core::ErrorCode;
use afterview_core::catalog::Procedure;
use afterview_core::tasks::{
    ComparisonResult, EngineKind, GenerateComparison, GenerateVisualization, Intensity,
    PreviewOptions, QUEUE_VISUALIZATIONS, VisualizationResult, image_url, visualization_image_url,
};
use afterview_engine::{Task, TaskContext, TaskError, TaskOptions};
use afterview_imaging::face::{self, Landmarks};
use afterview_imaging::intake::{decode_png, encode_png};
use afterview_imaging::{ImagingError, render};
use afterview_store::{StoreError, VisualizationKind, VisualizationRecord, visualization_key};
use bytes::Bytes;
use chrono::Utc;
use image::RgbImage;

use crate::{Deps, derived_id, fail, storage};

fn options() -> TaskOptions {
    TaskOptions {
        queue: QUEUE_VISUALIZATIONS.into(),
        ..TaskOptions::default()
    }
}

fn imaging(e: ImagingError) -> TaskError {
    fail(e.code(), e.to_string())
}

/// `app.tasks.visualization_tasks.generate_visualization`.
#[derive(Debug, Clone)]
pub struct GenerateVisualizationTask(pub Arc<Deps>);

/// `app.tasks.visualization_tasks.generate_comparison`.
#[derive(Debug, Clone)]
pub struct GenerateComparisonTask(pub Arc<Deps>);

/// Loads the owner's photo.
pub(crate) async fn load_photo(
    d: &Deps,
    ctx: &TaskContext,
    owner: &str,
    image_id: &str,
) -> Result<Arc<RgbImage>, TaskError> {
    let rec = d
        .meta
        .get_image(owner, image_id)
        .await
        .map_err(storage)?
        .ok_or_else(|| {
            fail(
                ErrorCode::ImageNotFound,
                format!("image {image_id} not found"),
            )
        })?;
    let bytes = d
        .blobs
        .get(&rec.blob_key)
        .await
        .map_err(storage)?
        .ok_or_else(|| {
            fail(
                ErrorCode::ImageNotFound,
                format!("the content of image {image_id} is missing"),
            )
        })?;
    let img = ctx
        .blocking(move |_| decode_png(&bytes))
        .await?
        .map_err(|e| fail(e.code(), e.to_string()))?;
    Ok(Arc::new(img))
}

fn status_text(engine: EngineKind) -> &'static str {
    match engine {
        EngineKind::Gemini => "Generating surgical preview with AI",
        EngineKind::Local => "Generating surgical preview",
    }
}

/// Makes one labelled preview.
async fn render_preview(
    d: &Deps,
    ctx: &TaskContext,
    photo: Arc<RgbImage>,
    lm: Arc<Landmarks>,
    procedure: &str,
    intensity: Intensity,
    engine: EngineKind,
) -> Result<RgbImage, TaskError> {
    let label = d.preview.label.clone();
    match engine {
        EngineKind::Local => {
            let procedure = procedure.to_owned();
            ctx.blocking(move |_| {
                let mut img = afterview_imaging::simulate(&photo, &procedure, intensity, &lm)
                    .map_err(imaging)?
                    .image;
                if let Some(l) = &label {
                    render::label(&mut img, l);
                }
                Ok::<_, TaskError>(img)
            })
            .await?
        }
        EngineKind::Gemini => gemini_preview(d, ctx, (photo, lm), procedure, intensity).await,
    }
}

/// What a Gemini preview keeps of its time limit for the work after the call (decode, blend,
/// label, save).
const AFTER_GEMINI: std::time::Duration = std::time::Duration::from_secs(10);

/// A Gemini edit of the photo, blended in where the same recipe's field moves the face (so
/// nothing outside the treated region changes), labelled.
async fn gemini_preview(
    d: &Deps,
    ctx: &TaskContext,
    (photo, lm): (Arc<RgbImage>, Arc<Landmarks>),
    procedure: &str,
    intensity: Intensity,
) -> Result<RgbImage, TaskError> {
    let label = d.preview.label.clone();
    let client = d.preview.gemini.clone().ok_or_else(|| {
        fail(
            ErrorCode::GeminiNotConfigured,
            "the Gemini engine is not configured (set AFTERVIEW_GEMINI_API_KEY)",
        )
    })?;
    let prompt = afterview_gemini::prompt_for(procedure, intensity.as_str()).ok_or_else(|| {
        fail(
            ErrorCode::UnknownProcedure,
            format!("no Gemini prompt for {procedure}"),
        )
    })?;
    // Where the result may change the photo, first: a procedure this photo cannot show (ears
    // under hair) fails before a call is paid for.
    let (p2, lm2, proc2) = (photo.clone(), lm.clone(), procedure.to_owned());
    let mask = ctx
        .blocking(move |_| afterview_imaging::treatment_mask(&p2, &proc2, intensity, &lm2))
        .await?
        .map_err(imaging)?;
    let p2 = photo.clone();
    let jpeg = ctx
        .blocking(move |_| gemini_input(&p2))
        .await?
        .map_err(|e| fail(ErrorCode::CorruptImage, e.to_string()))?;
    let generated = call_gemini(ctx, &client, &jpeg, &prompt).await?;
    let limits = d.preview.limits;
    ctx.blocking(move |_| {
        let gen_img =
            afterview_imaging::intake::decode_any(&generated.bytes, &limits).map_err(|e| {
                fail(
                    ErrorCode::GeminiBadResponse,
                    format!("the generated picture is unreadable: {e}"),
                )
            })?;
        // Gemini answers at its own size and framing: its face is laid over the photo's by
        // their landmarks, or the answer is refused (another pose or face would ghost).
        let laid = afterview_imaging::register::register(&photo, &lm, &gen_img)
            .map_err(|e| fail(ErrorCode::GeminiBadResponse, e.to_string()))?;
        let mut img = afterview_imaging::blend(&photo, &laid.image, &mask);
        if let Some(l) = &label {
            render::label(&mut img, l);
        }
        Ok::<_, TaskError>(img)
    })
    .await?
}

/// The longest side of the picture Gemini is sent. Gemini answers about 1024 pixels whatever
/// it gets; a 12-megapixel phone photo would make a request of several megabytes (the API's
/// inline limit is about 20 MB) for no better answer.
pub(crate) const GEMINI_INPUT_MAX_SIDE: u32 = 1536;

/// The photo as Gemini gets it: a JPEG at most [`GEMINI_INPUT_MAX_SIDE`] pixels on its longest
/// side (the answer is laid back over the full-size photo by its landmarks).
fn gemini_input(photo: &RgbImage) -> image::ImageResult<Vec<u8>> {
    let (w, h) = photo.dimensions();
    let long = w.max(h);
    let small;
    let sent = if long > GEMINI_INPUT_MAX_SIDE {
        let k = f64::from(GEMINI_INPUT_MAX_SIDE) / f64::from(long);
        let size = |v: u32| ((f64::from(v) * k).round() as u32).max(1);
        small = image::imageops::resize(
            photo,
            size(w),
            size(h),
            image::imageops::FilterType::Triangle,
        );
        &small
    } else {
        photo
    };
    let mut out = std::io::Cursor::new(vec![]);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92).encode_image(sent)?;
    Ok(out.into_inner())
}

/// Asks Gemini for the edit. The call and its retries end before the task's time limit, with
/// room to blend and save after it: a Gemini that does not answer fails as
/// `gemini_unavailable` (retried later by the task's policy), not as a time limit (never
/// retried); a cancelled task stops waiting at once.
async fn call_gemini(
    ctx: &TaskContext,
    client: &afterview_gemini::GeminiClient,
    jpeg: &[u8],
    prompt: &str,
) -> Result<afterview_gemini::GeneratedImage, TaskError> {
    let budget = ctx.time_left().map(|t| t.saturating_sub(AFTER_GEMINI));
    let call = client.edit_image_within(jpeg, "image/jpeg", prompt, budget);
    let answered = tokio::select! {
        r = call => r,
        () = ctx.cancelled() => return Err(TaskError::cancelled()),
    };
    answered.map_err(|e| {
        let retry = matches!(e.code(), ErrorCode::GeminiUnavailable);
        // Gemini's own text (quota details, project ids) goes to the log; the
        // result carries our code and its description.
        tracing::warn!(task_id = %ctx.id(), error = %e, "Gemini failed");
        let err = fail(e.code(), e.code().description());
        if retry {
            err.with_retry(afterview_engine::RetryHint::Policy)
        } else {
            err
        }
    })
}

/// Finds the face once per photo.
async fn landmarks(
    ctx: &TaskContext,
    photo: Arc<RgbImage>,
    opts: &PreviewOptions,
) -> Result<Arc<Landmarks>, TaskError> {
    let cp = opts.control_points;
    ctx.blocking(move |_| {
        face::locate(&photo, cp.as_ref())
            .map(Arc::new)
            .map_err(|e| imaging(ImagingError::Face(e)))
    })
    .await?
}

async fn save_png(
    d: &Deps,
    ctx: &TaskContext,
    key: String,
    img: RgbImage,
) -> Result<(), TaskError> {
    let png = ctx.blocking(move |_| encode_png(&img)).await?;
    d.blobs.put(&key, Bytes::from(png)).await.map_err(storage)?;
    // A re-run replaced the picture: a small copy the API made of the previous one goes (the
    // next request makes it anew).
    if let Some(thumb) = afterview_store::thumbnail_key(&key)
        && let Err(e) = d.blobs.delete(&thumb).await
    {
        tracing::warn!(key = %thumb, error = %e, "A replaced picture's small copy could not be removed.");
    }
    Ok(())
}

/// Saves a preview's record and picture, in the order that keeps both safe, and returns the
/// stored result when a previous run of the same task saved it already.
///
/// - The record is written first: it claims the id for its owner. An id that is someone else's
///   (a message forged on the broker with another user's task id) is refused before any file
///   is touched, so nobody can overwrite another user's picture.
/// - The photo may have been deleted while the preview was made: then nothing derived from it
///   may stay. It is checked before the record is written, again after (a delete in between
///   would miss the new record), and once more after the picture is written (a delete that
///   ran while the picture was encoded and stored found the record but no file yet), undoing
///   both writes when the photo is gone. A delete after the last check finds record and file.
/// - The preview itself may have been deleted (`DELETE /api/visualizations/{id}`) while its
///   picture was stored: that delete found the record but no file yet, so the record is read
///   again after the picture is written, and the picture removed when the record is gone.
/// - The picture is written last; if that fails, a record written by this run is removed, and
///   so is whatever a failed write may have stored after all (a time-out after the store took
///   it), and the task is retried.
/// - A run stopped while it saves (its hard time limit, a terminating revoke) is dropped where
///   it waits: [`Unsaved`](crate::unsaved::Unsaved) then removes the record it wrote.
async fn save_owned(
    d: &Deps,
    ctx: &TaskContext,
    rec: &VisualizationRecord,
    img: RgbImage,
) -> Result<Option<serde_json::Value>, TaskError> {
    let mut guard = crate::unsaved::Unsaved::new();
    let out = save_owned_on(d, ctx, rec, img, &mut guard).await;
    guard.disarm();
    out
}

async fn save_owned_on(
    d: &Deps,
    ctx: &TaskContext,
    rec: &VisualizationRecord,
    img: RgbImage,
    guard: &mut crate::unsaved::Unsaved,
) -> Result<Option<serde_json::Value>, TaskError> {
    // Revoked while the picture was made (the user's cancel does not stop a render): nothing
    // is saved, and the task ends REVOKED rather than SUCCESS. (A soft time limit that passed
    // meanwhile does not throw the finished picture away.)
    crate::revoked(ctx)?;
    let photo_gone = || async {
        d.meta
            .get_image(&rec.owner, &rec.image_id)
            .await
            .map(|r| r.is_none())
            .map_err(storage)
    };
    let gone = || {
        fail(
            ErrorCode::ImageNotFound,
            format!("image {} was deleted while the task ran", rec.image_id),
        )
    };
    if photo_gone().await? {
        return Err(gone());
    }
    let (inserted, stored) = match d.meta.insert_visualization(rec).await {
        Ok(()) => (true, None),
        Err(StoreError::Conflict(_)) => match d
            .meta
            .get_visualization(&rec.owner, &rec.id)
            .await
            .map_err(storage)?
        {
            Some(existing) => (false, Some(existing.result)),
            None => {
                tracing::warn!(task_id = %ctx.id(), owner = %rec.owner, "A task names another user's visualization; refused (a forged broker message?).");
                return Err(TaskError::invalid_arguments(format!(
                    "visualization {} belongs to another user; refused",
                    rec.id
                )));
            }
        },
        Err(e) => return Err(storage(e)),
    };
    let what = (
        crate::unsaved::Kind::Visualization,
        &*rec.owner,
        &*rec.id,
        &*rec.blob_key,
    );
    if inserted {
        guard.arm(d, ctx, what);
    }
    let write = save_png(d, ctx, rec.blob_key.clone(), img);
    crate::unsaved::write_file(d, (what, inserted), photo_gone, gone, write).await?;
    Ok(stored)
}

/// One preview to save.
struct Single<'a> {
    index: u8,
    owner: &'a str,
    image_id: &'a str,
    procedure_id: &'a str,
    engine: EngineKind,
    intensity: Intensity,
    generated_at: String,
}

/// Saves one preview (blob + record) and returns its result (the stored one on a re-run).
/// `guard` is armed when this run wrote the record, and left so for the caller to disarm.
async fn save_single(
    d: &Deps,
    ctx: &TaskContext,
    s: Single<'_>,
    img: RgbImage,
    guard: &mut crate::unsaved::Unsaved,
) -> Result<(VisualizationResult, serde_json::Value), TaskError> {
    let id = derived_id(ctx.id(), s.index);
    let key = visualization_key(&id);
    let result = VisualizationResult {
        id: id.clone(),
        image_id: s.image_id.to_owned(),
        procedure_id: s.procedure_id.to_owned(),
        engine: s.engine.as_str().into(),
        intensity: s.intensity,
        before_image_url: image_url(s.image_id),
        after_image_url: visualization_image_url(&id),
        generated_at: s.generated_at,
    };
    let value = serde_json::to_value(&result).expect("results serialize");
    let rec = VisualizationRecord {
        id,
        owner: s.owner.to_owned(),
        image_id: s.image_id.to_owned(),
        kind: VisualizationKind::Single,
        procedure_ids: vec![s.procedure_id.to_owned()],
        engine: s.engine,
        blob_key: key,
        result: value.clone(),
        task_id: Some(ctx.id().to_owned()),
        created_at: Utc::now(),
    };
    let stored = save_owned_on(d, ctx, &rec, img, guard).await?;
    Ok((result, stored.unwrap_or(value)))
}

impl Task for GenerateVisualizationTask {
    const NAME: &'static str = afterview_core::tasks::GENERATE_VISUALIZATION;
    type Args = GenerateVisualization;
    type Output = serde_json::Value;

    fn options(&self) -> TaskOptions {
        options()
    }

    async fn run(
        &self,
        ctx: TaskContext,
        a: GenerateVisualization,
    ) -> Result<serde_json::Value, TaskError> {
        let d = &self.0;
        ctx.progress(0, "Starting visualization generation").await;
        let procedure = d
            .catalog
            .get(&a.procedure_id)
            .ok_or_else(|| {
                fail(
                    ErrorCode::UnknownProcedure,
                    format!("unknown procedure {:?}", a.procedure_id),
                )
            })?
            .clone();
        let engine = d.preview.engine_for(a.options.engine)?;
        let photo = load_photo(d, &ctx, &a.user_id, &a.image_id).await?;
        ctx.progress(20, status_text(engine)).await;
        let lm = landmarks(&ctx, photo.clone(), &a.options).await?;
        ctx.check_cancelled()?;
        let after = render_preview(
            d,
            &ctx,
            photo,
            lm,
            &procedure.id,
            a.options.intensity,
            engine,
        )
        .await?;
        ctx.progress(80, "Saving visualization").await;
        let mut guard = crate::unsaved::Unsaved::new();
        let value = save_single(
            d,
            &ctx,
            Single {
                index: 0,
                owner: &a.user_id,
                image_id: &a.image_id,
                procedure_id: &procedure.id,
                engine,
                intensity: a.options.intensity,
                generated_at: crate::stamp(),
            },
            after,
            &mut guard,
        )
        .await;
        guard.disarm();
        let (_, value) = value?;
        ctx.progress(100, "Visualization complete").await;
        Ok(value)
    }
}

impl Task for GenerateComparisonTask {
    const NAME: &'static str = afterview_core::tasks::GENERATE_COMPARISON;
    type Args = GenerateComparison;
    type Output = serde_json::Value;

    fn options(&self) -> TaskOptions {
        options()
    }

    async fn run(
        &self,
        ctx: TaskContext,
        a: GenerateComparison,
    ) -> Result<serde_json::Value, TaskError> {
        let d = &self.0;
        ctx.progress(0, "Starting comparison generation").await;
        afterview_core::tasks::check_comparison(&a.procedure_ids)
            .map_err(|m| fail(ErrorCode::InvalidProcedureCount, m))?;
        let procedures = a
            .procedure_ids
            .iter()
            .map(|id| {
                d.catalog.get(id).cloned().ok_or_else(|| {
                    fail(
                        ErrorCode::UnknownProcedure,
                        format!("unknown procedure {id:?}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let engine = d.preview.engine_for(a.options.engine)?;
        let photo = load_photo(d, &ctx, &a.user_id, &a.image_id).await?;
        ctx.progress(20, status_text(engine)).await;
        let lm = landmarks(&ctx, photo.clone(), &a.options).await?;
        let scene = (photo, lm);
        let afters =
            render_each(d, &ctx, &scene, &procedures, (a.options.intensity, engine)).await?;
        ctx.progress(80, "Saving comparison").await;
        let names: Vec<String> = procedures.iter().map(|p| p.name.clone()).collect();
        // The composite first: it needs only crops, and each full-size preview can then be
        // handed to its save instead of copied (four 40 MP previews are 480 MB).
        let (composite, afters) =
            composite(&ctx, scene, names, afters, d.preview.label.clone()).await?;
        // Each preview saved stays armed until the comparison is: a run that fails or is
        // stopped after some of them leaves none in the owner's history.
        let mut guards = Vec::with_capacity(afters.len());
        let saved = save_comparison(
            d,
            &ctx,
            (&a, engine),
            (&procedures, afters, composite),
            &mut guards,
        )
        .await;
        for g in &mut guards {
            if saved.is_ok() {
                g.disarm();
            } else {
                g.undo_now().await;
            }
        }
        let value = saved?;
        ctx.progress(100, "Comparison complete").await;
        Ok(value)
    }
}

/// Saves a comparison's previews, then the comparison; `guards` gets each preview's guard.
async fn save_comparison(
    d: &Deps,
    ctx: &TaskContext,
    (a, engine): (&GenerateComparison, EngineKind),
    (procedures, afters, composite): (&[Procedure], Vec<RgbImage>, RgbImage),
    guards: &mut Vec<crate::unsaved::Unsaved>,
) -> Result<serde_json::Value, TaskError> {
    let now = crate::stamp();
    let mut items = Vec::with_capacity(afters.len());
    let mut item_values = Vec::with_capacity(afters.len());
    for (i, (p, img)) in procedures.iter().zip(afters).enumerate() {
        let single = Single {
            index: (i + 1) as u8,
            owner: &a.user_id,
            image_id: &a.image_id,
            procedure_id: &p.id,
            engine,
            intensity: a.options.intensity,
            generated_at: now.clone(),
        };
        let mut guard = crate::unsaved::Unsaved::new();
        let saved = save_single(d, ctx, single, img, &mut guard).await;
        if saved.is_err() {
            // Its own failure paths removed what it wrote.
            guard.disarm();
        }
        guards.push(guard);
        let (r, value) = saved?;
        item_values.push(value);
        items.push(r);
    }
    let comparison_id = derived_id(ctx.id(), 0);
    let result = ComparisonResult {
        id: comparison_id.clone(),
        image_id: a.image_id.clone(),
        procedure_ids: a.procedure_ids.clone(),
        engine: engine.as_str().into(),
        items,
        before_image_url: image_url(&a.image_id),
        comparison_image_url: visualization_image_url(&comparison_id),
        generated_at: now,
    };
    let mut value = serde_json::to_value(&result).expect("results serialize");
    value["items"] = serde_json::Value::Array(item_values);
    let rec = VisualizationRecord {
        id: comparison_id.clone(),
        owner: a.user_id.to_string(),
        image_id: a.image_id.clone(),
        kind: VisualizationKind::Comparison,
        procedure_ids: a.procedure_ids.clone(),
        engine,
        blob_key: visualization_key(&comparison_id),
        result: value.clone(),
        task_id: Some(ctx.id().to_owned()),
        created_at: Utc::now(),
    };
    let stored = save_owned(d, ctx, &rec, composite).await?;
    Ok(stored.unwrap_or(value))
}

/// Every procedure's preview of one photo, reporting progress from 20 to 80 %.
async fn render_each(
    d: &Deps,
    ctx: &TaskContext,
    (photo, lm): &(Arc<RgbImage>, Arc<Landmarks>),
    procedures: &[afterview_core::catalog::Procedure],
    (intensity, engine): (Intensity, EngineKind),
) -> Result<Vec<RgbImage>, TaskError> {
    let n = procedures.len();
    let mut afters = Vec::with_capacity(n);
    for (i, p) in procedures.iter().enumerate() {
        ctx.check_cancelled()?;
        let img =
            render_preview(d, ctx, photo.clone(), lm.clone(), &p.id, intensity, engine).await?;
        afters.push(img);
        let pct = 20 + (60 * (i + 1) / n) as u8;
        if pct < 80 {
            ctx.progress(pct, format!("Generated {} of {n} previews", i + 1))
                .await;
        }
    }
    Ok(afters)
}

/// The before and every after side by side (the afters are given back), each panel the face (cheek to cheek ≥ 40 % of its
/// width), not the photo. Each after panel carries the preview label (the crop leaves out the
/// photo's corner where the single preview has it, unless the face fills the photo).
async fn composite(
    ctx: &TaskContext,
    (photo, lm): (Arc<RgbImage>, Arc<Landmarks>),
    names: Vec<String>,
    afters: Vec<RgbImage>,
    label: Option<String>,
) -> Result<(RgbImage, Vec<RgbImage>), TaskError> {
    ctx.blocking(move |_| {
        let r = afterview_imaging::face_window(&lm, photo.width(), photo.height(), 0.62, 0.8);
        let crop = |img: &RgbImage| {
            image::imageops::crop_imm(img, r.x0, r.y0, r.width(), r.height()).to_image()
        };
        let before = crop(&photo);
        let corner_kept = r.x1 >= photo.width() && r.y1 >= photo.height();
        let crops: Vec<RgbImage> = afters
            .iter()
            .map(|a| {
                let mut c = crop(a);
                if let Some(l) = label.as_deref().filter(|_| !corner_kept) {
                    render::label(&mut c, l);
                }
                c
            })
            .collect();
        let mut panels: Vec<(&str, &RgbImage)> = vec![("Original", &before)];
        panels.extend(names.iter().map(String::as_str).zip(crops.iter()));
        (render::compose(&panels, r.height().clamp(256, 720)), afters)
    })
    .await
}

/// `afterview.detect_face`: where the previews will work — the face's box, five key points
/// and its outline, in the photo's pixels. Fails `no_face_detected` when there is none.
#[derive(Debug, Clone)]
pub struct DetectFaceTask(pub Arc<Deps>);

impl Task for DetectFaceTask {
    const NAME: &'static str = afterview_core::tasks::DETECT_FACE;
    type Args = afterview_core::tasks::DetectFace;
    type Output = serde_json::Value;

    fn options(&self) -> TaskOptions {
        options()
    }

    async fn run(
        &self,
        ctx: TaskContext,
        a: afterview_core::tasks::DetectFace,
    ) -> Result<serde_json::Value, TaskError> {
        let photo = load_photo(&self.0, &ctx, &a.user_id, &a.image_id).await?;
        let (w, h) = photo.dimensions();
        let lm = landmarks(&ctx, photo, &PreviewOptions::default()).await?;
        let pt = |p: face::Pt| serde_json::json!([p.x.round(), p.y.round()]);
        let outline = lm.group(&afterview_imaging::face::regions::FACE_OVAL);
        let (x0, y0, x1, y1) = outline.iter().fold(
            (f32::MAX, f32::MAX, f32::MIN, f32::MIN),
            |(a, b, c, d), p| (a.min(p.x), b.min(p.y), c.max(p.x), d.max(p.y)),
        );
        let (x0, y0) = (x0.max(0.0), y0.max(0.0));
        let (x1, y1) = (x1.min(w as f32), y1.min(h as f32));
        Ok(serde_json::json!({
            "image_id": a.image_id,
            "width": w,
            "height": h,
            "face": {
                "x": x0.round(), "y": y0.round(),
                "width": (x1 - x0).round(), "height": (y1 - y0).round(),
            },
            "landmarks": {
                "right_eye": pt(lm.right_eye()),
                "left_eye": pt(lm.left_eye()),
                "nose_tip": pt(lm.nose_tip()),
                "mouth": pt(lm.mouth()),
                "chin": pt(lm.chin()),
            },
            "outline": outline.into_iter().map(pt).collect::<Vec<_>>(),
        }))
    }
}

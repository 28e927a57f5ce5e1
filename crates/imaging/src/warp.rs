//! Smooth displacement fields from landmark handles, raster masks, and the resampling that
//! moves a photo's own pixels.
//!
//! A procedure says where mesh points go ([`Handle`]: a point and its forward shift; fixed
//! points are handles with no shift). [`Field::fit`] interpolates the shifts with compactly
//! supported Wendland C² radial functions, fitted from the *targets* back to the sources, so
//! the backward map needs no inversion: output pixel `x` takes its colour from
//! `x + field(x)`. [`apply`] evaluates the field on a coarse grid, multiplies it by an
//! *allow* mask (where anything may move), and resamples bilinearly. Pixels of the *protect*
//! mask (glasses frames, hair in front of the face) are laid back unchanged on top of the
//! warped skin, which is warped from a copy with those pixels filled in, so a frame never bends
//! and never leaves a ghost.
//!
//! Invariants: a pixel where the allow mask is 0 or the field is 0 is never written (bit-exact
//! locality); every loop runs in a fixed order, so the same inputs give the same bytes.

use image::{Rgb, RgbImage};

use crate::geom::Pt;

/// An axis-aligned pixel rectangle, `[x0, x1) × [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    /// Left (inclusive).
    pub x0: u32,
    /// Top (inclusive).
    pub y0: u32,
    /// Right (exclusive).
    pub x1: u32,
    /// Bottom (exclusive).
    pub y1: u32,
}

impl Rect {
    /// All of a `w` × `h` image.
    pub fn whole(w: u32, h: u32) -> Rect {
        Rect {
            x0: 0,
            y0: 0,
            x1: w,
            y1: h,
        }
    }

    /// Whether `(x, y)` is inside.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x0 && x < self.x1 && y >= self.y0 && y < self.y1
    }

    /// The smallest rectangle holding both.
    pub fn union(self, o: Rect) -> Rect {
        if self.is_empty() {
            return o;
        }
        if o.is_empty() {
            return self;
        }
        Rect {
            x0: self.x0.min(o.x0),
            y0: self.y0.min(o.y0),
            x1: self.x1.max(o.x1),
            y1: self.y1.max(o.y1),
        }
    }

    /// The overlap of both.
    pub fn intersect(self, o: Rect) -> Rect {
        let r = Rect {
            x0: self.x0.max(o.x0),
            y0: self.y0.max(o.y0),
            x1: self.x1.min(o.x1),
            y1: self.y1.min(o.y1),
        };
        if r.is_empty() { Rect::default() } else { r }
    }

    /// True when it holds no pixel.
    pub fn is_empty(&self) -> bool {
        self.x1 <= self.x0 || self.y1 <= self.y0
    }

    pub fn width(&self) -> u32 {
        self.x1.saturating_sub(self.x0)
    }

    pub fn height(&self) -> u32 {
        self.y1.saturating_sub(self.y0)
    }

    /// From float bounds, clipped to a `w × h` image.
    pub fn from_bounds(min: Pt, max: Pt, w: u32, h: u32) -> Rect {
        let c = |v: f32, hi: u32| v.max(0.0).min(hi as f32) as u32;
        Rect {
            x0: c(min.x.floor(), w),
            y0: c(min.y.floor(), h),
            x1: c(max.x.ceil() + 1.0, w),
            y1: c(max.y.ceil() + 1.0, h),
        }
    }

    /// This rectangle grown by `margin` pixels on every side, clipped to `w × h`.
    pub fn grown(self, margin: u32, w: u32, h: u32) -> Rect {
        Rect {
            x0: self.x0.saturating_sub(margin),
            y0: self.y0.saturating_sub(margin),
            x1: (self.x1 + margin).min(w),
            y1: (self.y1 + margin).min(h),
        }
    }

    /// The bounding rectangle of `pts` grown by `margin` pixels, clipped to `w × h`.
    pub fn around(pts: &[Pt], margin: f32, w: u32, h: u32) -> Rect {
        if pts.is_empty() {
            return Rect::default();
        }
        let (lo, hi) = pts.iter().fold(
            (Pt::new(f32::MAX, f32::MAX), Pt::new(f32::MIN, f32::MIN)),
            |(lo, hi), p| {
                (
                    Pt::new(lo.x.min(p.x), lo.y.min(p.y)),
                    Pt::new(hi.x.max(p.x), hi.y.max(p.y)),
                )
            },
        );
        Rect::from_bounds(
            Pt::new(lo.x - margin, lo.y - margin),
            Pt::new(hi.x + margin, hi.y + margin),
            w,
            h,
        )
    }
}

/// A point and where its content goes (image pixels). A handle with a zero shift pins its
/// content in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Handle {
    /// Where the content is.
    pub at: Pt,
    /// How far it moves.
    pub shift: Pt,
}

/// Wendland's C² function on the unit disc: 1 at 0, 0 with zero slope and curvature at 1.
fn wendland(r: f32) -> f32 {
    if r >= 1.0 {
        return 0.0;
    }
    let t = 1.0 - r;
    let t2 = t * t;
    t2 * t2 * (4.0 * r + 1.0)
}

/// A smooth backward displacement field: `source(x) = x + field.at(x)`.
#[derive(Debug, Clone)]
pub struct Field {
    centers: Vec<Pt>,
    coef: Vec<Pt>,
    radius: f32,
    /// Bucket grid over the centres (cell = radius) for the neighbour search.
    origin: Pt,
    cols: usize,
    rows: usize,
    buckets: Vec<Vec<u32>>,
}

impl Field {
    /// Interpolates the handles' shifts with support `radius` (pixels). Handles within half a
    /// pixel of an earlier one are dropped; handles farther than two radii from every moving
    /// handle cannot matter and are left out of the solve.
    pub fn fit(handles: &[Handle], radius: f32) -> Field {
        let radius = radius.max(2.0);
        let moving: Vec<Pt> = handles
            .iter()
            .filter(|h| h.shift.len() > 1e-3)
            .map(|h| h.at)
            .collect();
        let mut kept: Vec<Handle> = vec![];
        for h in handles {
            let target = h.at.plus(h.shift);
            let near_moving = moving.iter().any(|m| m.minus(h.at).len() < 2.0 * radius);
            let dup = kept
                .iter()
                .any(|k| k.at.plus(k.shift).minus(target).len() < 0.5);
            if near_moving && !dup {
                kept.push(*h);
            }
        }
        let centers: Vec<Pt> = kept.iter().map(|h| h.at.plus(h.shift)).collect();
        let n = centers.len();
        // Symmetric positive definite system (Wendland functions are positive definite in 2-D),
        // with a tiny ridge for close centres.
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                let v = f64::from(wendland(centers[i].minus(centers[j]).len() / radius));
                a[i * n + j] = v;
                a[j * n + i] = v;
            }
            a[i * n + i] += 1e-6;
        }
        let coef = if n == 0 || !cholesky(&mut a, n) {
            vec![Pt::default(); n]
        } else {
            let solve = |rhs: Vec<f64>| cholesky_solve(&a, n, rhs);
            let cx = solve(kept.iter().map(|h| -f64::from(h.shift.x)).collect());
            let cy = solve(kept.iter().map(|h| -f64::from(h.shift.y)).collect());
            cx.iter()
                .zip(&cy)
                .map(|(&x, &y)| Pt::new(x as f32, y as f32))
                .collect()
        };
        let (lo, hi) = centers.iter().fold(
            (Pt::new(f32::MAX, f32::MAX), Pt::new(f32::MIN, f32::MIN)),
            |(lo, hi), p| {
                (
                    Pt::new(lo.x.min(p.x), lo.y.min(p.y)),
                    Pt::new(hi.x.max(p.x), hi.y.max(p.y)),
                )
            },
        );
        let origin = if n == 0 { Pt::default() } else { lo };
        let (cols, rows) = if n == 0 {
            (1, 1)
        } else {
            (
                ((hi.x - lo.x) / radius) as usize + 1,
                ((hi.y - lo.y) / radius) as usize + 1,
            )
        };
        let mut buckets = vec![vec![]; cols * rows];
        for (i, c) in centers.iter().enumerate() {
            let (bx, by) = (
                ((c.x - origin.x) / radius) as usize,
                ((c.y - origin.y) / radius) as usize,
            );
            buckets[by.min(rows - 1) * cols + bx.min(cols - 1)].push(i as u32);
        }
        Field {
            centers,
            coef,
            radius,
            origin,
            cols,
            rows,
            buckets,
        }
    }

    /// The backward displacement at `p`.
    pub fn at(&self, p: Pt) -> Pt {
        let fx = ((p.x - self.origin.x) / self.radius).floor() as i64;
        let fy = ((p.y - self.origin.y) / self.radius).floor() as i64;
        let mut acc = Pt::default();
        for by in fy - 1..=fy + 1 {
            if by < 0 || by >= self.rows as i64 {
                continue;
            }
            for bx in fx - 1..=fx + 1 {
                if bx < 0 || bx >= self.cols as i64 {
                    continue;
                }
                for &i in &self.buckets[by as usize * self.cols + bx as usize] {
                    let c = self.centers[i as usize];
                    let w = wendland(p.minus(c).len() / self.radius);
                    if w > 0.0 {
                        acc = acc.plus(self.coef[i as usize].times(w));
                    }
                }
            }
        }
        acc
    }

    /// The pixels the field can move (its support), clipped to `w × h`.
    pub fn support(&self, w: u32, h: u32) -> Rect {
        let live: Vec<Pt> = self
            .centers
            .iter()
            .zip(&self.coef)
            .filter(|(_, c)| c.len() > 1e-6)
            .map(|(p, _)| *p)
            .collect();
        Rect::around(&live, self.radius, w, h)
    }
}

/// In-place Cholesky factorization (lower triangle). False when not positive definite.
fn cholesky(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 {
            return false;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    true
}

fn cholesky_solve(l: &[f64], n: usize, mut b: Vec<f64>) -> Vec<f64> {
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= l[k * n + i] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
    b
}

/// A soft raster mask (0-1) over a rectangle of the image; 0 everywhere else.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    /// Where it is defined.
    pub rect: Rect,
    alpha: Vec<f32>,
}

impl Mask {
    /// An empty mask over `rect`.
    pub fn new(rect: Rect) -> Mask {
        Mask {
            rect,
            alpha: vec![0.0; (rect.width() * rect.height()) as usize],
        }
    }

    /// The value at an image pixel.
    pub fn at(&self, x: u32, y: u32) -> f32 {
        if !self.rect.contains(x, y) {
            return 0.0;
        }
        self.alpha[((y - self.rect.y0) * self.rect.width() + x - self.rect.x0) as usize]
    }

    /// Sets one pixel (inside `rect`).
    pub(crate) fn put(&mut self, x: u32, y: u32, v: f32) {
        self.set(x, y, v);
    }

    fn set(&mut self, x: u32, y: u32, v: f32) {
        let w = self.rect.width();
        self.alpha[((y - self.rect.y0) * w + x - self.rect.x0) as usize] = v;
    }

    /// Sets `value` inside the closed polygon (pixel centres, even-odd rule), keeping the
    /// larger of the old and new value.
    pub fn fill_polygon(&mut self, poly: &[Pt], value: f32) {
        self.polygon(poly, |old| old.max(value));
    }

    /// Sets 0 inside the polygon.
    pub fn clear_polygon(&mut self, poly: &[Pt]) {
        self.polygon(poly, |_| 0.0);
    }

    fn polygon(&mut self, poly: &[Pt], f: impl Fn(f32) -> f32) {
        if poly.len() < 3 || self.rect.is_empty() {
            return;
        }
        let r = self.rect;
        let mut xs: Vec<f32> = vec![];
        for y in r.y0..r.y1 {
            let yc = y as f32;
            xs.clear();
            for i in 0..poly.len() {
                let (a, b) = (poly[i], poly[(i + 1) % poly.len()]);
                if (a.y <= yc) != (b.y <= yc) {
                    xs.push(a.x + (yc - a.y) / (b.y - a.y) * (b.x - a.x));
                }
            }
            xs.sort_by(f32::total_cmp);
            for pair in xs.chunks_exact(2) {
                let x0 = pair[0].ceil().max(r.x0 as f32) as u32;
                let x1 = (pair[1].floor() + 1.0).min(r.x1 as f32).max(0.0) as u32;
                for x in x0..x1.max(x0) {
                    let v = f(self.at(x, y));
                    self.set(x, y, v);
                }
            }
        }
    }

    /// Sets each pixel to `f(x, y, old)`.
    pub fn map(&mut self, f: impl Fn(u32, u32, f32) -> f32) {
        let r = self.rect;
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 {
                let v = f(x, y, self.at(x, y));
                self.set(x, y, v);
            }
        }
    }

    /// Multiplies by another mask (0 where `o` is undefined).
    pub fn times(&mut self, o: &Mask) {
        self.map(|x, y, v| v * o.at(x, y));
    }

    /// Softens edges: three box blurs of radius `r` (≈ a Gaussian of σ ≈ r).
    pub fn blur(&mut self, r: u32) {
        if r == 0 {
            return;
        }
        let (w, h) = (self.rect.width() as usize, self.rect.height() as usize);
        for _ in 0..3 {
            box_blur_rows(&mut self.alpha, w, h, r as usize);
            transpose(&mut self.alpha, w, h);
            box_blur_rows(&mut self.alpha, h, w, r as usize);
            transpose(&mut self.alpha, h, w);
        }
    }

    /// The mask's wide parts: where it is ≥ 0.5, opened by a square of radius `r` (eroded,
    /// then grown back), so every line thinner than `2r + 1` pixels is gone; 0 or 1.
    pub fn opened(&self, r: u32) -> Mask {
        let mut m = self.clone();
        m.map(|_, _, v| if v >= 0.5 { 0.0 } else { 1.0 });
        m.dilate(r);
        m.map(|_, _, v| 1.0 - v);
        m.dilate(r);
        m
    }

    /// Grows (r > 0) the mask by taking the maximum over a square of radius `r`: rows then
    /// columns, each in time independent of `r` (a 40 MP photo's mask grown by 40 px took
    /// billions of comparisons window by window).
    pub fn dilate(&mut self, r: u32) {
        let (w, h) = (self.rect.width() as usize, self.rect.height() as usize);
        if w == 0 || h == 0 {
            return;
        }
        let r = r as usize;
        let max_rows = |a: &mut Vec<f32>, w: usize, h: usize| {
            let mut scratch = RunningMax::default();
            for row in a.chunks_exact_mut(w).take(h) {
                scratch.apply(row, r);
            }
        };
        max_rows(&mut self.alpha, w, h);
        transpose(&mut self.alpha, w, h);
        max_rows(&mut self.alpha, h, w);
        transpose(&mut self.alpha, h, w);
    }
}

/// The maximum over a sliding window (van Herk / Gil-Werman): the row padded with `r` zeros
/// each side (mask values are never below 0) is cut into blocks of the window's length `k`;
/// a window then spans at most two blocks, and its maximum is the larger of the first
/// block's maximum from the window's start to the block's end and the second's from its
/// start to the window's end. Three passes per row, whatever `r`.
#[derive(Default)]
struct RunningMax {
    padded: Vec<f32>,
    from_start: Vec<f32>,
    to_end: Vec<f32>,
}

impl RunningMax {
    fn apply(&mut self, row: &mut [f32], r: usize) {
        let (n, k) = (row.len(), 2 * r + 1);
        self.padded.clear();
        self.padded.resize(r, 0.0);
        self.padded.extend_from_slice(row);
        self.padded.resize(n + 2 * r, 0.0);
        let p = &self.padded;
        self.from_start.clear();
        self.from_start
            .extend(p.iter().enumerate().scan(0.0f32, |m, (i, &v)| {
                *m = if i % k == 0 { v } else { m.max(v) };
                Some(*m)
            }));
        self.to_end.clear();
        self.to_end.resize(p.len(), 0.0);
        let mut m = 0.0f32;
        for i in (0..p.len()).rev() {
            m = if i % k == k - 1 || i == p.len() - 1 {
                p[i]
            } else {
                m.max(p[i])
            };
            self.to_end[i] = m;
        }
        for (x, out) in row.iter_mut().enumerate() {
            *out = self.to_end[x].max(self.from_start[x + 2 * r]);
        }
    }
}

fn box_blur_rows(a: &mut [f32], w: usize, h: usize, r: usize) {
    let mut row = vec![0f32; w];
    for y in 0..h {
        let line = &mut a[y * w..(y + 1) * w];
        let mut prefix = vec![0f64; w + 1];
        for x in 0..w {
            prefix[x + 1] = prefix[x] + f64::from(line[x]);
        }
        for (x, out) in row.iter_mut().enumerate() {
            let lo = x.saturating_sub(r);
            let hi = (x + r + 1).min(w);
            *out = ((prefix[hi] - prefix[lo]) / (hi - lo) as f64) as f32;
        }
        line.copy_from_slice(&row);
    }
}

/// One box blur of radius `r` over a `w` × `h` grid (rows, then columns).
pub(crate) fn box_blur(v: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    let mut b = v.to_vec();
    box_blur_rows(&mut b, w, h, r);
    transpose(&mut b, w, h);
    box_blur_rows(&mut b, h, w, r);
    transpose(&mut b, h, w);
    b
}

fn transpose(a: &mut Vec<f32>, w: usize, h: usize) {
    let mut t = vec![0f32; a.len()];
    for y in 0..h {
        for x in 0..w {
            t[x * h + y] = a[y * w + x];
        }
    }
    *a = t;
}

/// Bilinear sample at a real position (clamped to the image).
pub(crate) fn sample(img: &RgbImage, x: f32, y: f32) -> [f32; 3] {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as i64, y.floor() as i64);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let px = |xx: i64, yy: i64| img.get_pixel(xx as u32, yy as u32).0;
    let (a, b, c, d) = (px(x0, y0), px(x1, y0), px(x0, y1), px(x1, y1));
    let mut out = [0.0; 3];
    for i in 0..3 {
        let top = a[i] as f32 + (b[i] as f32 - a[i] as f32) * fx;
        let bot = c[i] as f32 + (d[i] as f32 - c[i] as f32) * fx;
        out[i] = top + (bot - top) * fy;
    }
    out
}

pub(crate) fn to_u8(v: f32) -> u8 {
    (v + 0.5).clamp(0.0, 255.0) as u8
}

/// Fills the pixels where `protect` > 0.5 inside `rect` from their unprotected neighbours,
/// ring by ring (each new pixel is the mean of its already-known 8-neighbours). Each ring is
/// the unknown neighbours of the last one, so the work is the protected area, not its area
/// times its depth (a protected region as large as a 40 MP photo took ~10^11 steps).
fn fill_protected(img: &RgbImage, protect: &Mask, rect: Rect) -> RgbImage {
    let mut out = img.clone();
    let (w, h) = (rect.width() as usize, rect.height() as usize);
    let idx = |x: u32, y: u32| (y - rect.y0) as usize * w + (x - rect.x0) as usize;
    let neighbours = move |x: u32, y: u32| {
        (-1i64..=1)
            .flat_map(move |dy| (-1i64..=1).map(move |dx| (dx, dy)))
            .filter(|&d| d != (0, 0))
            .map(move |(dx, dy)| (x as i64 + dx, y as i64 + dy))
            .filter(move |&(nx, ny)| {
                nx >= rect.x0 as i64
                    && ny >= rect.y0 as i64
                    && nx < rect.x1 as i64
                    && ny < rect.y1 as i64
            })
            .map(|(nx, ny)| (nx as u32, ny as u32))
    };
    let mut known = vec![true; w * h];
    for y in rect.y0..rect.y1 {
        for x in rect.x0..rect.x1 {
            if protect.at(x, y) > 0.5 {
                known[idx(x, y)] = false;
            }
        }
    }
    // The first ring: unknown pixels next to a known one.
    let mut queued = vec![false; w * h];
    let mut ring = vec![];
    for y in rect.y0..rect.y1 {
        for x in rect.x0..rect.x1 {
            if !known[idx(x, y)] && neighbours(x, y).any(|(nx, ny)| known[idx(nx, ny)]) {
                queued[idx(x, y)] = true;
                ring.push((x, y));
            }
        }
    }
    while !ring.is_empty() {
        // Every pixel of a ring from the pixels known before it.
        let filled: Vec<Rgb<u8>> = ring
            .iter()
            .map(|&(x, y)| {
                let (mut acc, mut n) = ([0u32; 3], 0u32);
                for (nx, ny) in neighbours(x, y).filter(|&(nx, ny)| known[idx(nx, ny)]) {
                    let p = out.get_pixel(nx, ny).0;
                    for c in 0..3 {
                        acc[c] += u32::from(p[c]);
                    }
                    n += 1;
                }
                let n = n.max(1);
                Rgb(acc.map(|v| ((v + n / 2) / n) as u8))
            })
            .collect();
        for (&(x, y), p) in ring.iter().zip(filled) {
            out.put_pixel(x, y, p);
            known[idx(x, y)] = true;
        }
        let mut next = vec![];
        for &(x, y) in &ring {
            for (nx, ny) in neighbours(x, y) {
                let i = idx(nx, ny);
                if !known[i] && !queued[i] {
                    queued[i] = true;
                    next.push((nx, ny));
                }
            }
        }
        ring = next;
    }
    out
}

/// Moves pixels: output `x` takes the colour at `x + allow(x) · field(x)`, and protected
/// pixels are laid back unchanged on top. Where `walls` are given (wide protected areas: a
/// collar, the background), the field eases to nothing before its source would reach one
/// ([`clearance`]): what lies behind a frame's thin line is filled in from both sides, but a
/// source deep in a collar would be all invented (rows of one colour, streaks). Returns the
/// image and the rectangle that may differ.
pub fn apply(
    img: &RgbImage,
    field: &Field,
    allow: &Mask,
    (protect, walls): (Option<&Mask>, Option<&Mask>),
) -> (RgbImage, Rect) {
    let (w, h) = img.dimensions();
    let region = field.support(w, h).intersect(allow.rect);
    let mut out = img.clone();
    if region.is_empty() {
        return (out, region);
    }
    // The field on a grid every `step` pixels, bilinearly interpolated in between.
    let step = 2u32;
    let gw = (region.width() / step + 2) as usize;
    let gh = (region.height() / step + 2) as usize;
    let mut grid = vec![Pt::default(); gw * gh];
    let mut reach = 0f32;
    for gy in 0..gh {
        for gx in 0..gw {
            let p = Pt::new(
                (region.x0 + gx as u32 * step) as f32,
                (region.y0 + gy as u32 * step) as f32,
            );
            let mut v = field.at(p);
            if let Some(walls) = walls {
                v = v.times(clearance(walls, p, v));
            }
            reach = reach.max(v.len());
            grid[gy * gw + gx] = v;
        }
    }
    let base = match protect {
        Some(p) => {
            let m = reach.ceil() as u32 + 2;
            let r = Rect {
                x0: region.x0.saturating_sub(m),
                y0: region.y0.saturating_sub(m),
                x1: (region.x1 + m).min(w),
                y1: (region.y1 + m).min(h),
            };
            fill_protected(img, p, r)
        }
        None => img.clone(),
    };
    for y in region.y0..region.y1 {
        for x in region.x0..region.x1 {
            let a = allow.at(x, y);
            if a <= 0.0 {
                continue;
            }
            let (lx, ly) = (x - region.x0, y - region.y0);
            let (gx, gy) = ((lx / step) as usize, (ly / step) as usize);
            let (fx, fy) = (
                (lx % step) as f32 / step as f32,
                (ly % step) as f32 / step as f32,
            );
            let g = |i: usize, j: usize| grid[j * gw + i];
            let top = g(gx, gy).times(1.0 - fx).plus(g(gx + 1, gy).times(fx));
            let bot = g(gx, gy + 1)
                .times(1.0 - fx)
                .plus(g(gx + 1, gy + 1).times(fx));
            let v = top.times(1.0 - fy).plus(bot.times(fy)).times(a);
            if v.x.abs() < 1e-3 && v.y.abs() < 1e-3 {
                continue;
            }
            let s = sample(&base, x as f32 + v.x, y as f32 + v.y);
            let keep = protect.map_or(0.0, |p| p.at(x, y));
            let o = img.get_pixel(x, y).0;
            let px = [0, 1, 2].map(|c| to_u8(s[c] * (1.0 - keep) + o[c] as f32 * keep));
            out.put_pixel(x, y, Rgb(px));
        }
    }
    (out, region)
}

/// How much of the backward displacement `v` at `p` may be kept before its source meets a
/// wall (`walls` ≥ 0.5): all of it when none lies within `3|v|` along `v`, else the smoothstep
/// of the wall's distance over `3|v|`. The source so stops short of the wall (`|v|·s(t) ≤ 3|v|·t`),
/// and along `v` the mapping keeps its order, stretching what it moves at most twofold
/// (`1 − s′/3 ≥ ½`): no fold, no tear. Marched in at most 48 steps (walls are wider than a step).
fn clearance(walls: &Mask, p: Pt, v: Pt) -> f32 {
    let len = v.len();
    if len < 0.5 {
        return 1.0;
    }
    let reach = 3.0 * len;
    let step = (reach / 48.0).max(1.0);
    let dir = v.times(1.0 / len);
    let mut d = 0.0;
    while d <= reach {
        let q = p.plus(dir.times(d));
        let (x, y) = (q.x.round(), q.y.round());
        if x >= 0.0 && y >= 0.0 && walls.at(x as u32, y as u32) >= 0.5 {
            let t = d / reach;
            return t * t * (3.0 - 2.0 * t);
        }
        d += step;
    }
    1.0
}

/// Edge-preserving removal of fine texture inside `mask`: a self-guided filter (He et al.,
/// "Guided Image Filtering", 2013) of radius `radius` and regularization `eps` (in 8-bit
/// intensity units squared) gives each pixel's smooth base; the detail (pixel − base) is
/// reduced by `amount × mask`. Strong edges (features) have a ≈ 1 and keep their detail.
pub fn smooth_detail(
    img: &RgbImage,
    mask: &Mask,
    radius: u32,
    eps: f32,
    amount: f32,
) -> (RgbImage, Rect) {
    let (w, h) = img.dimensions();
    let region = mask.rect;
    let mut out = img.clone();
    if region.is_empty() || radius == 0 {
        return (out, region);
    }
    // Work area: the region plus two radii (the filter reads boxes of boxes).
    let wr = region.grown(2 * radius, w, h);
    let (ww, wh) = (wr.width() as usize, wr.height() as usize);
    let r = radius as usize;
    let boxed = |v: &[f32]| box_blur(v, ww, wh, r);
    let mut bases = vec![];
    for c in 0..3 {
        let i: Vec<f32> = (0..wh)
            .flat_map(|y| (0..ww).map(move |x| (x, y)))
            .map(|(x, y)| img.get_pixel(wr.x0 + x as u32, wr.y0 + y as u32).0[c] as f32)
            .collect();
        let ii: Vec<f32> = i.iter().map(|v| v * v).collect();
        let (mean, mean2) = (boxed(&i), boxed(&ii));
        let a: Vec<f32> = mean
            .iter()
            .zip(&mean2)
            .map(|(m, m2)| {
                let var = (m2 - m * m).max(0.0);
                var / (var + eps)
            })
            .collect();
        let b: Vec<f32> = mean.iter().zip(&a).map(|(m, a)| m - a * m).collect();
        let (ma, mb) = (boxed(&a), boxed(&b));
        bases.push(
            i.iter()
                .zip(ma.iter().zip(&mb))
                .map(|(v, (a, b))| a * v + b)
                .collect::<Vec<f32>>(),
        );
    }
    each_masked(mask, amount, |x, y, k| {
        let at = (y - wr.y0) as usize * ww + (x - wr.x0) as usize;
        let p = img.get_pixel(x, y).0;
        let px = [0, 1, 2].map(|c| {
            let v = p[c] as f32;
            to_u8(v - k * (v - bases[c][at]))
        });
        out.put_pixel(x, y, Rgb(px));
    });
    (out, region)
}

/// Shading evened out inside `mask` under the skin's texture (frequency separation): at each
/// pixel, each channel's average over a box of radius `fine` is replaced by its average over a
/// box of radius `coarse`, by `amount × mask`. Both averages are taken over `weight` only (what
/// is skin: the lashes, the eye, a frame are no part of them), so detail finer than `fine`
/// stays as it is and a shadow or a bulge narrower than `coarse` takes its surroundings' tone.
/// What stays darker than that tone by more than the skin's grain ([`DODGE_GRAIN`]: a crease,
/// a shadow narrower than `fine`) is lifted towards it by the same share, on skin only (times
/// `weight` there), by no more than three times what its own `fine` box lacks (a crease, not a
/// pore or a freckle). `weight` should cover the mask's rectangle grown by `coarse`; pixels whose
/// boxes hold almost no weight are left alone.
pub fn even_shading(
    img: &RgbImage,
    mask: &Mask,
    weight: &Mask,
    (fine, coarse): (u32, u32),
    amount: f32,
) -> (RgbImage, Rect) {
    let (w, h) = img.dimensions();
    let region = mask.rect;
    let mut out = img.clone();
    if region.is_empty() || coarse <= fine {
        return (out, region);
    }
    let wr = region.grown(coarse, w, h);
    let (ww, wh) = (wr.width() as usize, wr.height() as usize);
    let boxed = |v: &[f32], r: usize| box_blur(v, ww, wh, r);
    let cells = || (0..wh).flat_map(|y| (0..ww).map(move |x| (wr.x0 + x as u32, wr.y0 + y as u32)));
    let wt: Vec<f32> = cells().map(|(x, y)| weight.at(x, y)).collect();
    let (wf, wc) = (boxed(&wt, fine as usize), boxed(&wt, coarse as usize));
    // Each channel's two weighted averages; the smallest weight share a box may hold.
    const FLOOR: f32 = 0.05;
    let mut lift = vec![[0f32; 3]; ww * wh];
    let mut tone = vec![[0f32; 3]; ww * wh];
    for c in 0..3 {
        let v: Vec<f32> = cells()
            .zip(&wt)
            .map(|((x, y), k)| img.get_pixel(x, y).0[c] as f32 * k)
            .collect();
        let (nf, nc) = (boxed(&v, fine as usize), boxed(&v, coarse as usize));
        for (i, (l, t)) in lift.iter_mut().zip(tone.iter_mut()).enumerate() {
            if wf[i] > FLOOR && wc[i] > FLOOR {
                t[c] = nc[i] / wc[i];
                l[c] = t[c] - nf[i] / wf[i];
            }
        }
    }
    each_masked(mask, amount, |x, y, k| {
        let i = (y - wr.y0) as usize * ww + (x - wr.x0) as usize;
        let p = img.get_pixel(x, y).0;
        let mut v = [0, 1, 2].map(|c| p[c] as f32 + k * lift[i][c]);
        // What stays darker than the surroundings' tone by more than the skin's grain (a
        // crease, a shadow narrower than `fine`) is lifted towards it by the same share, the
        // same amount added to each channel (scaled, a shaded pixel's extra chroma grew with
        // it: a lifted crease came out redder than the skin); only on what counts as skin,
        // and no more than three times what its own `fine` box lacks: a crease fills a good
        // part of its box, a dark pore or a freckle a small one, and they stay.
        let (lv, lt) = (luma(v), luma(tone[i]));
        let short = (lt - DODGE_GRAIN - lv).min(3.0 * (luma(lift[i]) - DODGE_GRAIN));
        if short > 0.0 {
            let add = k * weight.at(x, y) * short;
            v = v.map(|c| c + add);
        }
        out.put_pixel(x, y, Rgb(v.map(to_u8)));
    });
    (out, region)
}

/// Calls `f(x, y, k)` for each pixel of `mask`'s rectangle where `k = amount × mask` is
/// positive.
fn each_masked(mask: &Mask, amount: f32, mut f: impl FnMut(u32, u32, f32)) {
    let r = mask.rect;
    for y in r.y0..r.y1 {
        for x in r.x0..r.x1 {
            let k = amount * mask.at(x, y);
            if k > 0.0 {
                f(x, y, k);
            }
        }
    }
}

/// How much darker than its surroundings' tone skin may be and count as its own grain (8-bit
/// luminance) in [`even_shading`]; darker is a crease or a shadow.
const DODGE_GRAIN: f32 = 6.0;

fn luma(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fill as it was first written, pass by pass over every pixel still unknown: the
    /// reference the ring-by-ring fill must equal.
    fn fill_by_passes(img: &RgbImage, protect: &Mask, rect: Rect) -> RgbImage {
        let mut out = img.clone();
        let w = rect.width() as usize;
        let idx = |x: u32, y: u32| (y - rect.y0) as usize * w + (x - rect.x0) as usize;
        let mut known = vec![true; w * rect.height() as usize];
        let mut todo = vec![];
        for y in rect.y0..rect.y1 {
            for x in rect.x0..rect.x1 {
                if protect.at(x, y) > 0.5 {
                    known[idx(x, y)] = false;
                    todo.push((x, y));
                }
            }
        }
        while !todo.is_empty() {
            let (mut next, mut filled) = (vec![], vec![]);
            for &(x, y) in &todo {
                let (mut acc, mut n) = ([0u32; 3], 0u32);
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                        if (dx, dy) == (0, 0)
                            || nx < rect.x0 as i64
                            || ny < rect.y0 as i64
                            || nx >= rect.x1 as i64
                            || ny >= rect.y1 as i64
                            || !known[idx(nx as u32, ny as u32)]
                        {
                            continue;
                        }
                        let p = out.get_pixel(nx as u32, ny as u32).0;
                        for c in 0..3 {
                            acc[c] += u32::from(p[c]);
                        }
                        n += 1;
                    }
                }
                if n == 0 {
                    next.push((x, y));
                } else {
                    filled.push((x, y, Rgb(acc.map(|v| ((v + n / 2) / n) as u8))));
                }
            }
            if filled.is_empty() {
                break;
            }
            for (x, y, p) in filled {
                out.put_pixel(x, y, p);
                known[idx(x, y)] = true;
            }
            todo = next;
        }
        out
    }

    #[test]
    fn the_ring_fill_equals_the_fill_pass_by_pass() {
        let img = gradient(64, 48);
        let rect = Rect {
            x0: 4,
            y0: 3,
            x1: 60,
            y1: 45,
        };
        let shapes: [fn(u32, u32) -> bool; 4] = [
            // a disc, a ring with a hole, scattered dots, and all of it (nothing known)
            |x, y| (x as i64 - 30).pow(2) + (y as i64 - 24).pow(2) < 15 * 15,
            |x, y| {
                let d = (x as i64 - 30).pow(2) + (y as i64 - 20).pow(2);
                d > 5 * 5 && d < 18 * 18
            },
            |x, y| (x * 7 + y * 13) % 5 != 0,
            |_, _| true,
        ];
        for (k, inside) in shapes.iter().enumerate() {
            let mut m = Mask::new(Rect {
                x0: 0,
                y0: 0,
                x1: 64,
                y1: 48,
            });
            m.map(|x, y, _| if inside(x, y) { 1.0 } else { 0.0 });
            assert!(
                fill_protected(&img, &m, rect) == fill_by_passes(&img, &m, rect),
                "shape {k}"
            );
        }
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 3 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    fn full(w: u32, h: u32) -> Mask {
        ones(0, 0, w, h)
    }

    /// A mask of ones over `x0..x1` × `y0..y1`.
    fn ones(x0: u32, y0: u32, x1: u32, y1: u32) -> Mask {
        let mut m = Mask::new(Rect { x0, y0, x1, y1 });
        m.map(|_, _, _| 1.0);
        m
    }

    #[test]
    fn the_field_interpolates_its_handles_and_vanishes_far_away() {
        let handles = [
            Handle {
                at: Pt::new(50.0, 50.0),
                shift: Pt::new(4.0, -2.0),
            },
            Handle {
                at: Pt::new(70.0, 50.0),
                shift: Pt::default(),
            },
        ];
        let f = Field::fit(&handles, 30.0);
        // Backward: the target of a moving handle reads from its source.
        let v = f.at(Pt::new(54.0, 48.0));
        assert!(
            (v.x + 4.0).abs() < 0.01 && (v.y - 2.0).abs() < 0.01,
            "{v:?}"
        );
        assert!(f.at(Pt::new(70.0, 50.0)).len() < 0.01);
        assert_eq!(f.at(Pt::new(200.0, 200.0)), Pt::default());
    }

    #[test]
    fn pixels_outside_the_allow_mask_never_change() {
        let img = gradient(200, 160);
        let f = Field::fit(
            &[Handle {
                at: Pt::new(100.0, 80.0),
                shift: Pt::new(6.0, -4.0),
            }],
            30.0,
        );
        let allow = ones(90, 0, 200, 160);
        let (out, region) = apply(&img, &f, &allow, (None, None));
        assert!(region.x0 >= 90);
        for (x, y, p) in out.enumerate_pixels() {
            if x < 90 || !region.contains(x, y) {
                assert_eq!(p, img.get_pixel(x, y));
            }
        }
        assert_ne!(out, img);
    }

    #[test]
    fn translation_moves_content_in_its_direction() {
        // A dark dot at (50, 50) pushed right by 5 px.
        let mut img = RgbImage::from_pixel(100, 100, Rgb([255, 255, 255]));
        img.put_pixel(50, 50, Rgb([0, 0, 0]));
        let f = Field::fit(
            &[Handle {
                at: Pt::new(50.0, 50.0),
                shift: Pt::new(5.0, 0.0),
            }],
            30.0,
        );
        let (out, _) = apply(&img, &f, &full(100, 100), (None, None));
        let darkest = out
            .enumerate_pixels()
            .min_by_key(|(_, _, p)| p.0[0])
            .map(|(x, y, _)| (x, y))
            .unwrap();
        assert_eq!(darkest.1, 50);
        assert!((54..=56).contains(&darkest.0), "{darkest:?}");
    }

    #[test]
    fn opening_drops_thin_lines_and_keeps_wide_areas() {
        let mut m = full(60, 40);
        m.map(|x, y, _| {
            let line = (10..13).contains(&x);
            let block = (30..50).contains(&x) && (10..30).contains(&y);
            if line || block { 0.9 } else { 0.2 }
        });
        let o = m.opened(2);
        for y in 0..40 {
            for x in 0..60 {
                let block = (30..50).contains(&x) && (10..30).contains(&y);
                assert_eq!(o.at(x, y), if block { 1.0 } else { 0.0 }, "at {x},{y}");
            }
        }
    }

    /// Content lifted over a collar (a wall): the rows above it are drawn from the image
    /// alone, in order, the last one not moving; through the collar's filled-in pixels each
    /// column's last rows took one colour.
    #[test]
    fn sources_stop_short_of_walls() {
        let img = RgbImage::from_fn(60, 80, |x, y| {
            if y >= 50 {
                Rgb([20, 30, 200])
            } else {
                Rgb([(x * 3) as u8, (y * 4 + 10) as u8, 90])
            }
        });
        let collar = ones(0, 50, 60, 80);
        let mut protect = full(60, 80);
        protect.map(|x, y, _| collar.at(x, y));
        let f = Field::fit(
            &[Handle {
                at: Pt::new(30.0, 40.0),
                shift: Pt::new(0.0, -6.0),
            }],
            400.0,
        );
        let green = |im: &RgbImage, x: u32, y: u32| im.get_pixel(x, y).0[1];
        let walled = Some(&collar);
        for (walls, ordered) in [(None, false), (walled, true)] {
            let (out, _) = apply(&img, &f, &full(60, 80), (Some(&protect), walls));
            let in_order =
                (10..50).all(|x| (20..49).all(|y| green(&out, x, y + 1) > green(&out, x, y)));
            assert_eq!(in_order, ordered, "walls: {}", walls.is_some());
            if ordered {
                for x in 10..50 {
                    assert!(green(&out, x, 49).abs_diff(green(&img, x, 49)) <= 1);
                    assert!(
                        green(&out, x, 20) >= green(&img, x, 20) + 20,
                        "lifted above"
                    );
                }
            }
        }
    }

    #[test]
    fn protected_pixels_stay_while_what_is_behind_them_moves() {
        // A vertical dark bar (a glasses frame) over a horizontal gradient pushed right.
        let img = RgbImage::from_fn(120, 60, |x, y| {
            if (58..62).contains(&x) {
                Rgb([0, 0, 0])
            } else {
                Rgb([(x * 2) as u8, 100, (y * 3) as u8])
            }
        });
        let mut protect = Mask::new(Rect {
            x0: 0,
            y0: 0,
            x1: 120,
            y1: 60,
        });
        protect.map(|x, _, _| if (58..62).contains(&x) { 1.0 } else { 0.0 });
        let f = Field::fit(
            &[Handle {
                at: Pt::new(60.0, 30.0),
                shift: Pt::new(6.0, 0.0),
            }],
            40.0,
        );
        let (out, _) = apply(&img, &f, &full(120, 60), (Some(&protect), None));
        for y in 0..60 {
            for x in 58..62 {
                assert_eq!(out.get_pixel(x, y), img.get_pixel(x, y));
            }
            // No ghost of the bar next to it.
            for x in (50..58).chain(62..70) {
                assert!(out.get_pixel(x, y).0[1] > 60, "ghost at {x},{y}");
            }
        }
        assert_ne!(out, img);
    }

    #[test]
    fn polygons_fill_their_inside() {
        let mut m = Mask::new(Rect {
            x0: 0,
            y0: 0,
            x1: 20,
            y1: 20,
        });
        m.fill_polygon(
            &[
                Pt::new(5.0, 5.0),
                Pt::new(15.0, 5.0),
                Pt::new(15.0, 15.0),
                Pt::new(5.0, 15.0),
            ],
            1.0,
        );
        assert_eq!(m.at(10, 10), 1.0);
        assert_eq!(m.at(2, 10), 0.0);
        m.blur(2);
        assert!(m.at(5, 10) > 0.2 && m.at(5, 10) < 0.8);
    }

    #[test]
    fn the_guided_filter_flattens_texture_and_keeps_edges() {
        // Fine noise on the left half, a hard edge in the middle.
        let img = RgbImage::from_fn(80, 40, |x, y| {
            let n = ((x * 7919 + y * 104_729) % 17) as u8;
            if x < 40 {
                Rgb([150 + n, 120 + n, 100 + n])
            } else {
                Rgb([40, 40, 40])
            }
        });
        let (out, _) = smooth_detail(&img, &full(80, 40), 3, 400.0, 1.0);
        let spread = |im: &RgbImage| {
            let v: Vec<f32> = (10..30)
                .flat_map(|y| (5..30).map(move |x| (x, y)))
                .map(|(x, y)| im.get_pixel(x, y).0[0] as f32)
                .collect();
            let m = v.iter().sum::<f32>() / v.len() as f32;
            v.iter().map(|a| (a - m).powi(2)).sum::<f32>() / v.len() as f32
        };
        assert!(spread(&out) < spread(&img) * 0.5);
        assert!(out.get_pixel(45, 20).0[0] < 50 && out.get_pixel(34, 20).0[0] > 140);
    }

    /// A dark crescent 6 px tall, a crease 1 px wide and a dark pore on textured skin, a
    /// near-black line (lashes) above them that the weights leave out: the crescent and the
    /// crease take the skin's tone, the texture and the pore stay, and the line neither darkens
    /// the skin next to it nor changes itself.
    #[test]
    fn shading_is_evened_under_the_texture_and_excluded_pixels_do_not_count() {
        let texture = |x: u32, y: u32| ((x * 7919 + y * 104_729) % 9) as f32 - 4.0;
        let tone = |y: u32| match y {
            10 => 20.0,
            20..26 | 34 => 150.0,
            _ => 190.0,
        };
        let img = RgbImage::from_fn(60, 40, |x, y| {
            let v = if y == 10 {
                20.0
            } else if (x, y) == (30, 29) {
                150.0
            } else {
                tone(y) + texture(x, y)
            };
            Rgb([to_u8(v), to_u8(v * 0.8), to_u8(v * 0.7)])
        });
        let mut weight = full(60, 40);
        weight.map(|_, y, _| if y == 10 { 0.0 } else { 1.0 });
        let mask = ones(10, 8, 50, 40);
        let (out, _) = even_shading(&img, &mask, &weight, (1, 8), 1.0);
        let row_mean = |im: &RgbImage, y: u32| {
            (20..40)
                .map(|x| im.get_pixel(x, y).0[0] as f32)
                .sum::<f32>()
                / 20.0
        };
        // The crescent, 40 darker, to its surroundings' average (itself and the crease a part).
        let (before, after) = (row_mean(&img, 23), row_mean(&out, 23));
        assert!(before < 155.0 && after > 165.0, "{before} -> {after}");
        // A crease 1 px wide, 40 darker, finer than the averages see: lifted as a shadow.
        let (before, after) = (row_mean(&img, 34), row_mean(&out, 34));
        assert!(before < 155.0 && after > 168.0, "{before} -> {after}");
        // A dark pore, one pixel 40 darker in its row: it fills a ninth of its box, and stays.
        let pore = |im: &RgbImage| im.get_pixel(30, 29).0[0] as f32 - row_mean(im, 29);
        assert!(pore(&out) < -25.0, "{} -> {}", pore(&img), pore(&out));
        // The texture is the same: each pixel's difference from its row's mean.
        for y in [16, 23, 31] {
            for x in 20..40 {
                let d = |im: &RgbImage| im.get_pixel(x, y).0[0] as f32 - row_mean(im, y);
                assert!((d(&out) - d(&img)).abs() <= 3.0, "({x}, {y})");
            }
        }
        // Next to the excluded line the skin keeps its tone (were the line counted, the skin
        // beside it would move towards the line's dark), and the line stays dark.
        assert!((row_mean(&out, 12) - row_mean(&img, 12)).abs() < 4.0);
        assert!((row_mean(&out, 8) - row_mean(&img, 8)).abs() < 4.0);
        assert!(row_mean(&out, 10) < 30.0);
        // Outside the mask nothing changes.
        assert_eq!(out.get_pixel(5, 23), img.get_pixel(5, 23));
    }

    /// The running maximum gives what the window-by-window maximum gives, at the edges too.
    #[test]
    fn running_max_matches_the_windows_maximum() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32
        };
        let mut scratch = super::RunningMax::default();
        for (n, r) in [
            (1usize, 0usize),
            (1, 3),
            (5, 1),
            (17, 2),
            (17, 8),
            (64, 5),
            (100, 40),
        ] {
            let row: Vec<f32> = (0..n).map(|_| next()).collect();
            let naive: Vec<f32> = (0..n)
                .map(|x| {
                    let (lo, hi) = (x.saturating_sub(r), (x + r + 1).min(n));
                    row[lo..hi].iter().copied().fold(0.0, f32::max)
                })
                .collect();
            let mut fast = row.clone();
            scratch.apply(&mut fast, r);
            assert_eq!(fast, naive, "n = {n}, r = {r}");
        }
    }
}

//! Sweep plots for `quantkit sweep`: perplexity (PPL) and KL divergence (KLD) of
//! quantized variants against bits per weight (bpw), with the Pareto front marked.
//!
//! Drawn with `plotters` on a 1200×520 canvas: its SVG backend gives [`svg`], its
//! bitmap backend an RGB buffer that the `png` crate encodes for [`png`]. Text
//! uses DejaVu Sans, embedded from the `dejavu` crate and registered with
//! plotters' `ab_glyph` font table, so no system font is read. The same input
//! gives the same bytes, and no input (empty, NaN, inf, huge or tiny values,
//! odd labels) makes it panic; drawing errors come back as [`PlotError`].

use std::sync::OnceLock;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One quantized variant.
#[derive(Debug, Clone)]
pub struct Point {
    pub label: String,
    pub bpw: f64,
    pub ppl: f64,
    pub ppl_err: f64,
    pub kld: f64,
}

/// Which points are on the Pareto front of (bpw, metric): no other point has
/// bpw <= and metric <= with one strictly smaller. NaN/inf metrics are never
/// on the front (and such points never dominate others). Exact duplicates
/// do not dominate each other, so both stay on the front.
pub fn pareto_front(xy: &[(f64, f64)]) -> Vec<bool> {
    let ok = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    xy.iter()
        .map(|a| ok(a) && !xy.iter().any(|b| ok(b) && b.0 <= a.0 && b.1 <= a.1 && (b.0 < a.0 || b.1 < a.1)))
        .collect()
}

/// A drawing or encoding failure (from plotters, the font table or the PNG encoder).
#[derive(Debug, Clone)]
pub struct PlotError(pub String);

impl std::fmt::Display for PlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plot: {}", self.0)
    }
}
impl std::error::Error for PlotError {}

fn err(e: impl std::fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

type Res<T = ()> = Result<T, PlotError>;

/// Two panels side by side: left PPL vs bpw (with ±ppl_err error bars), right
/// KLD vs bpw. The KLD axis is logarithmic when no KLD is negative, at least
/// two are positive and max/min of the positive ones exceeds 20; KLD == 0
/// points are then clamped to the axis bottom. Front points are filled and
/// joined, others hollow; every point carries its label. `base_ppl` adds a
/// dashed reference line labelled "base" to the PPL panel. Points whose bpw or
/// metric is NaN/inf are skipped in that panel (and counted in a note).
pub fn svg(points: &[Point], title: &str, base_ppl: Option<f64>) -> Res<String> {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (W as u32, H as u32)).into_drawing_area();
        draw(&root, false, points, title, base_ppl)?;
        root.present().map_err(err)?;
    }
    Ok(s)
}

/// The same picture as [`svg`], as the bytes of a 1200×520 8-bit RGB PNG.
pub fn png(points: &[Point], title: &str, base_ppl: Option<f64>) -> Res<Vec<u8>> {
    let mut rgb = vec![255u8; W as usize * H as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (W as u32, H as u32)).into_drawing_area();
        draw(&root, true, points, title, base_ppl)?;
        root.present().map_err(err)?;
    }
    let mut out = Vec::new();
    let mut enc = ::png::Encoder::new(&mut out, W as u32, H as u32);
    enc.set_color(::png::ColorType::Rgb);
    enc.set_depth(::png::BitDepth::Eight);
    enc.set_compression(::png::Compression::High);
    let mut w = enc.write_header().map_err(err)?;
    w.write_image_data(&rgb).map_err(err)?;
    w.finish().map_err(err)?;
    Ok(out)
}

// --------------------------------------------------------------- canvas ----

const W: i32 = 1200;
const H: i32 = 520;
/// Top and bottom pixel rows of both plot areas.
const PY0: i32 = 88;
const PY1: i32 = 452;
/// Font sizes (plotters' units) of the title, other text and point labels.
const BIG: f64 = 24.0;
const TXT: f64 = 15.0;
const LBL: f64 = 14.0;

const AXIS: RGBColor = RGBColor(40, 40, 40);
const GRID: RGBColor = RGBColor(226, 226, 226);
const FRONT: RGBColor = RGBColor(28, 74, 150);
const OTHER: RGBColor = RGBColor(150, 150, 150);
const LABEL: RGBColor = RGBColor(70, 70, 70);
const BASE: RGBColor = RGBColor(200, 50, 40);

/// Registers the embedded font as plotters' "sans-serif" once per process.
fn font() -> Res {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the embedded DejaVu Sans font does not parse".to_string())
    })
    .clone()
    .map_err(PlotError)
}

fn style(size: f64, c: RGBColor, h: HPos) -> TextStyle<'static> {
    ("sans-serif", size).into_font().color(&c).pos(Pos::new(h, VPos::Center))
}

/// Pixel-space drawing helpers over one backend's root area.
struct Canvas<'a, DB: DrawingBackend> {
    root: &'a DrawingArea<DB, Shift>,
    /// Bitmap backend: plotters' glyph placement sits ~0.17 em high of the
    /// anchor there (an SVG viewer centres the text itself).
    raster: bool,
}

impl<DB: DrawingBackend> Canvas<'_, DB> {
    /// Downward shift that centres text of this size on its anchor.
    fn nudge(&self, size: f64) -> i32 {
        if self.raster {
            (size * 0.17).round() as i32
        } else {
            0
        }
    }
    /// Text with its vertical centre at `y`.
    fn text(&self, x: i32, y: i32, s: &str, size: f64, h: HPos, c: RGBColor) -> Res {
        let at = (x, y + self.nudge(size));
        self.root.draw(&Text::new(s.to_string(), at, style(size, c, h))).map_err(err)
    }
    /// Rendered width in pixels (from the font's advances).
    fn text_w(&self, s: &str, size: f64) -> i32 {
        match self.root.estimate_text_size(s, &style(size, AXIS, HPos::Left)) {
            Ok((w, _)) => w.min(10_000) as i32,
            Err(_) => (s.chars().count() as f64 * size * 0.6) as i32,
        }
    }
    fn line(&self, a: (i32, i32), b: (i32, i32), w: u32, c: RGBColor) -> Res {
        self.root.draw(&PathElement::new(vec![a, b], c.stroke_width(w))).map_err(err)
    }
    fn dashed(&self, a: (i32, i32), b: (i32, i32), c: RGBColor) -> Res {
        self.root.draw(&DashedPathElement::new(vec![a, b], 6, 4, c.stroke_width(1))).map_err(err)
    }
    /// Filled disc, or a ring with a white interior.
    fn dot(&self, (x, y): (i32, i32), fill: bool, c: RGBColor) -> Res {
        let inner = if fill { c.filled() } else { WHITE.filled() };
        self.root.draw(&Circle::new((x, y), 4, inner)).map_err(err)?;
        self.root.draw(&Circle::new((x, y), 4, c.stroke_width(2))).map_err(err)
    }
    fn frame(&self, x0: i32, x1: i32) -> Res {
        // x0 - 1: on top of the y axis line plotters draws left of the plotting area.
        self.root.draw(&Rectangle::new([(x0 - 1, PY0), (x1, PY1)], AXIS.stroke_width(1))).map_err(err)
    }
    /// Error bar with 6-pixel caps.
    fn bar(&self, x: i32, y0: i32, y1: i32, c: RGBColor) -> Res {
        self.line((x, y0), (x, y1), 1, c)?;
        self.line((x - 3, y0), (x + 3, y0), 1, c)?;
        self.line((x - 3, y1), (x + 3, y1), 1, c)
    }
}

/// Replaces characters that XML or the font cannot take with '?', and cuts to
/// at most `n` characters, ending in "..." when cut.
fn clean(s: &str, n: usize) -> String {
    let ok = |c: char| if c.is_control() || c == '\u{fffe}' || c == '\u{ffff}' { '?' } else { c };
    if s.chars().count() <= n {
        s.chars().map(ok).collect()
    } else {
        s.chars().take(n.saturating_sub(3)).map(ok).chain("...".chars()).collect()
    }
}

// ---------------------------------------------------------------- scene ----

/// One plottable value of a panel.
struct Datum {
    x: f64,
    y: f64,
    err: f64,
    label: String,
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    raster: bool,
    points: &[Point],
    title: &str,
    base: Option<f64>,
) -> Res {
    font()?;
    root.fill(&WHITE).map_err(err)?;
    let cv = Canvas { root, raster };
    cv.text(W / 2, 22, &clean(title, 95), BIG, HPos::Center, AXIS)?;
    let base = base.filter(|b| b.is_finite());
    let has_err = points
        .iter()
        .any(|p| p.bpw.is_finite() && p.ppl.is_finite() && p.ppl_err.is_finite() && p.ppl_err > 0.0);
    legend(&cv, has_err, base.is_some())?;
    let label = |p: &Point| clean(&p.label, 32);
    let ppl: Vec<Datum> = points
        .iter()
        .filter(|p| p.bpw.is_finite() && p.ppl.is_finite())
        .map(|p| {
            let e = p.ppl_err;
            let ok = e.is_finite() && e > 0.0 && (p.ppl - e).is_finite() && (p.ppl + e).is_finite();
            Datum { x: p.bpw, y: p.ppl, err: if ok { e } else { 0.0 }, label: label(p) }
        })
        .collect();
    let kld: Vec<Datum> = points
        .iter()
        .filter(|p| p.bpw.is_finite() && p.kld.is_finite())
        .map(|p| Datum { x: p.bpw, y: p.kld, err: 0.0, label: label(p) })
        .collect();
    panel(&cv, 75, 575, "perplexity", &ppl, points.len() - ppl.len(), base, false)?;
    panel(&cv, 680, 1180, "KL divergence", &kld, points.len() - kld.len(), None, true)
}

/// Legend row under the title.
fn legend<DB: DrawingBackend>(cv: &Canvas<DB>, err: bool, base: bool) -> Res {
    let mut items = vec![(0, "Pareto front"), (1, "dominated")];
    if err {
        items.push((2, "PPL \u{b1} error"));
    }
    if base {
        items.push((3, "base PPL"));
    }
    let step = |t: &str| 24 + cv.text_w(t, TXT) + 28;
    let total: i32 = items.iter().map(|(_, t)| step(t)).sum::<i32>() - 28;
    let (mut x, y) = (W / 2 - total / 2, 52);
    for (kind, t) in items {
        match kind {
            0 => {
                cv.line((x, y), (x + 18, y), 2, FRONT)?;
                cv.dot((x + 9, y), true, FRONT)?;
            }
            1 => cv.dot((x + 9, y), false, OTHER)?,
            2 => cv.bar(x + 9, y - 7, y + 7, FRONT)?,
            _ => cv.dashed((x, y), (x + 18, y), BASE)?,
        }
        cv.text(x + 24, y, t, TXT, HPos::Left, LABEL)?;
        x += step(t);
    }
    Ok(())
}

/// Pixel box (x0, y0, x1, y1) of a point label.
type Box4 = [f64; 4];
/// A drawn line segment in pixels (an obstacle for labels).
type Seg = ((i32, i32), (i32, i32));

fn overlap(a: &Box4, b: &Box4) -> f64 {
    ((a[2].min(b[2]) - a[0].max(b[0])).max(0.0)) * ((a[3].min(b[3]) - a[1].max(b[1])).max(0.0))
}

/// Number of samples (every ~3 px) of segment a–c that fall inside box `b`.
fn seg_hits(b: &Box4, a: (i32, i32), c: (i32, i32)) -> f64 {
    let (a, c) = ((a.0 as f64, a.1 as f64), (c.0 as f64, c.1 as f64));
    let n = ((c.0 - a.0).hypot(c.1 - a.1) / 3.0).ceil().clamp(1.0, 400.0) as usize;
    (0..=n)
        .map(|k| k as f64 / n as f64)
        .filter(|t| {
            let (x, y) = (a.0 + t * (c.0 - a.0), a.1 + t * (c.1 - a.1));
            x >= b[0] && x <= b[2] && y >= b[1] && y <= b[3]
        })
        .count() as f64
}

/// One panel in columns `px0..px1`: axes, ticks, grid, reference line, front
/// line, error bars, markers and labels.
#[allow(clippy::too_many_arguments)]
fn panel<DB: DrawingBackend>(
    cv: &Canvas<DB>,
    px0: i32,
    px1: i32,
    ytitle: &str,
    data: &[Datum],
    skipped: usize,
    base: Option<f64>,
    want_log: bool,
) -> Res {
    let xmid = (px0 + px1) / 2;
    cv.text(xmid, PY1 + 40, "bits per weight", TXT, HPos::Center, AXIS)?;
    if skipped > 0 {
        cv.text(px1, PY0 - 14, &format!("{skipped} skipped (non-finite)"), TXT, HPos::Right, OTHER)?;
    }
    if data.is_empty() {
        cv.text(px0, PY0 - 14, ytitle, TXT, HPos::Left, AXIS)?;
        cv.text(xmid, (PY0 + PY1) / 2, "no data", TXT, HPos::Center, LABEL)?;
        return cv.frame(px0, px1);
    }
    let fold = |it: &mut dyn Iterator<Item = f64>| {
        it.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)))
    };
    let (xlo, xhi) = fold(&mut data.iter().map(|d| d.x));
    let (plo, phi) = fold(&mut data.iter().filter(|d| d.y > 0.0).map(|d| d.y));
    let log = want_log
        && data.iter().all(|d| d.y >= 0.0)
        && data.iter().filter(|d| d.y > 0.0).count() >= 2
        && phi / plo > 20.0;
    let yt = format!("{ytitle}{}", if log { " (log scale)" } else { "" });
    cv.text(px0, PY0 - 14, &yt, TXT, HPos::Left, AXIS)?;
    let (xl, xh, xt) = lin_axis(xlo, xhi);
    let (yl, yh, yt) = if log {
        log_axis(plo, phi)
    } else {
        let (a, b) = fold(&mut data.iter().flat_map(|d| [d.y - d.err, d.y + d.err]).chain(base));
        lin_axis(a, b)
    };
    // plotters draws grid, ticks and tick labels; the y axis is in log10 units when `log`.
    let (lw, lh) = (72, 36);
    let area = cv.root.clone().shrink((px0 - lw, PY0), ((px1 - px0 + lw) as u32, (PY1 - PY0 + lh) as u32));
    let mut chart = ChartBuilder::on(&area)
        .y_label_area_size(lw)
        .x_label_area_size(lh)
        .build_cartesian_2d(Ax::new(xl, xh, &xt), Ax::new(yl, yh, &yt))
        .map_err(err)?;
    let name = |ticks: &Ticks, v: f64| {
        let near = ticks.iter().min_by(|a, b| (a.0 - v).abs().total_cmp(&(b.0 - v).abs()));
        near.map(|t| t.1.clone()).unwrap_or_default()
    };
    let (fx, fy) = (|v: &f64| name(&xt, *v), |v: &f64| name(&yt, *v));
    chart
        .configure_mesh()
        .bold_line_style(GRID.stroke_width(1))
        .axis_style(AXIS.stroke_width(1))
        .set_all_tick_mark_size(5)
        .label_style(("sans-serif", TXT - 1.0).into_font().color(&AXIS))
        .x_labels(64)
        .y_labels(64)
        .y_label_offset(cv.nudge(TXT - 1.0))
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .draw()
        .map_err(err)?;
    // Data to pixels; non-positive values on a log axis go to the axis bottom.
    let at = |x: f64, y: f64| {
        let t = if !log {
            y
        } else if y > 0.0 {
            y.log10()
        } else {
            yl
        };
        chart.backend_coord(&(x.clamp(xl, xh), t.clamp(yl, yh)))
    };
    // Obstacles for label placement: markers, lines and the "base" tag.
    let pts: Vec<(i32, i32)> = data.iter().map(|d| at(d.x, d.y)).collect();
    let mut taken: Vec<Box4> =
        pts.iter().map(|&(x, y)| [x - 5, y - 5, x + 5, y + 5].map(f64::from)).collect();
    let mut segs: Vec<Seg> = Vec::new();
    let base_y = base.map(|b| at(xl, b).1);
    if let Some(y) = base_y {
        cv.dashed((px0, y), (px1, y), BASE)?;
        segs.push(((px0, y), (px1, y)));
    }
    let front = pareto_front(&data.iter().map(|d| (d.x, d.y)).collect::<Vec<_>>());
    let mut order: Vec<usize> = (0..data.len()).filter(|&i| front[i]).collect();
    order.sort_by(|&i, &j| data[i].x.total_cmp(&data[j].x).then(data[i].y.total_cmp(&data[j].y)));
    for w in order.windows(2) {
        cv.line(pts[w[0]], pts[w[1]], 2, FRONT)?;
        segs.push((pts[w[0]], pts[w[1]]));
    }
    for (i, d) in data.iter().enumerate() {
        if d.err > 0.0 && !log {
            let (x, y0, y1) = (pts[i].0, at(d.x, d.y - d.err).1, at(d.x, d.y + d.err).1);
            cv.bar(x, y0, y1, if front[i] { FRONT } else { OTHER })?;
            segs.push(((x, y0), (x, y1)));
        }
    }
    for (i, &p) in pts.iter().enumerate() {
        cv.dot(p, front[i], if front[i] { FRONT } else { OTHER })?;
    }
    let xs = (px0 as f64, px1 as f64);
    if let Some(y) = base_y.map(f64::from) {
        // The "base" tag goes above or below either end of its line, wherever is clearest.
        let (l, r) = (xs.0 + 4.0, xs.1 - 4.0);
        let c = [
            (l, y - 9.0, HPos::Left),
            (r, y - 9.0, HPos::Right),
            (l, y + 9.0, HPos::Left),
            (r, y + 9.0, HPos::Right),
        ];
        let (x, y, h, b) = spot(&c, cv.text_w("base", LBL) as f64, &taken, usize::MAX, &segs, xs);
        cv.text(x as i32, y as i32, "base", LBL, h, BASE)?;
        taken.push(b);
    }
    // Point labels, greedily in input order, each at the best of 12 spots around its marker.
    const AROUND: [(f64, f64, HPos); 12] = [
        (9.0, 0.0, HPos::Left),
        (-9.0, 0.0, HPos::Right),
        (7.0, -12.0, HPos::Left),
        (7.0, 12.0, HPos::Left),
        (-7.0, -12.0, HPos::Right),
        (-7.0, 12.0, HPos::Right),
        (0.0, -15.0, HPos::Center),
        (0.0, 15.0, HPos::Center),
        (9.0, -24.0, HPos::Left),
        (9.0, 24.0, HPos::Left),
        (-9.0, -24.0, HPos::Right),
        (-9.0, 24.0, HPos::Right),
    ];
    for (i, d) in data.iter().enumerate().filter(|(_, d)| !d.label.is_empty()) {
        let (px, py) = (pts[i].0 as f64, pts[i].1 as f64);
        let c = AROUND.map(|(dx, dy, h)| (px + dx, py + dy, h));
        let (x, y, h, b) = spot(&c, cv.text_w(&d.label, LBL) as f64, &taken, i, &segs, xs);
        cv.text(x as i32, y as i32, &d.label, LBL, h, LABEL)?;
        taken.push(b);
    }
    cv.frame(px0, px1)
}

/// Where a label `w` pixels wide goes: the first candidate (x, y, side) that
/// stays inside the plot (columns `xs`) and overlaps nothing in `taken` (but
/// entry `skip`, its own marker) or `segs`, else the one of least overlap.
fn spot(
    cands: &[(f64, f64, HPos)],
    w: f64,
    taken: &[Box4],
    skip: usize,
    segs: &[Seg],
    xs: (f64, f64),
) -> (f64, f64, HPos, Box4) {
    let (py0, py1) = (PY0 as f64, PY1 as f64);
    let mut best = (f64::INFINITY, 0.0, 0.0, HPos::Left, [0.0; 4]);
    for &(x, y, h) in cands {
        let x0 = match h {
            HPos::Left => x,
            HPos::Center => x - w / 2.0,
            HPos::Right => x - w,
        };
        let b = [x0 - 1.0, y - 7.0, x0 + w + 1.0, y + 6.0];
        let outside = (xs.0 + 2.0 - b[0]).max(0.0)
            + (b[2] - xs.1 + 2.0).max(0.0)
            + (py0 + 2.0 - b[1]).max(0.0)
            + (b[3] - py1 + 2.0).max(0.0);
        let cost = outside * 100.0
            + taken.iter().enumerate().filter(|&(k, _)| k != skip).map(|(_, t)| overlap(&b, t)).sum::<f64>()
            + segs.iter().map(|&(a, c)| 20.0 * seg_hits(&b, a, c)).sum::<f64>();
        if cost < best.0 || best.0.is_infinite() {
            best = (cost, x, y, h, b);
        }
        if cost == 0.0 {
            break;
        }
    }
    (best.1, best.2, best.3, best.4)
}

// ----------------------------------------------------------------- axes ----

/// A linear plotters axis over [lo, hi] (lo < hi, both finite) with our ticks.
struct Ax {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}
impl Ax {
    fn new(lo: f64, hi: f64, ticks: &Ticks) -> Self {
        Ax { lo, hi, ticks: ticks.iter().map(|t| t.0).collect() }
    }
}
impl Ranged for Ax {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;
    /// Values outside [lo, hi] (or NaN) land on the nearer edge (the low one).
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0);
        let t = if t.is_nan() { 0.0 } else { t };
        limit.0 + ((limit.1 - limit.0) as f64 * t).round() as i32
    }
    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }
    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// Rounds a raw step to 1, 2 or 5 × 10^k (0 when impossible).
fn nice_step(raw: f64) -> f64 {
    if !(raw > 0.0 && raw.is_finite()) {
        return 0.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    (if n < 1.5 {
        1.0
    } else if n < 3.5 {
        2.0
    } else if n < 7.5 {
        5.0
    } else {
        10.0
    }) * mag
}

type Ticks = Vec<(f64, String)>;

/// Linear axis covering [lo, hi] with a little padding (or a made-up span for
/// degenerate input) and ticks at nice steps.
fn lin_axis(lo: f64, hi: f64) -> (f64, f64, Ticks) {
    let (mut lo, mut hi) =
        if lo <= hi { (lo.clamp(-1e300, 1e300), hi.clamp(-1e300, 1e300)) } else { (0.0, 1.0) };
    let mid = 0.5 * lo + 0.5 * hi;
    if hi - lo <= mid.abs() * 1e-9 || hi - lo < 1e-300 {
        let half = if mid.abs() > 1e-300 { mid.abs() * 0.1 } else { 1.0 };
        (lo, hi) = (mid - half, mid + half);
    } else {
        let pad = (hi - lo) * 0.06;
        (lo, hi) = (lo - pad, hi + pad);
    }
    let step = nice_step((hi - lo) / 6.0);
    let mut ticks = Vec::new();
    if step > 0.0 {
        let dec = (-step.log10().floor()).clamp(0.0, 12.0) as usize;
        let big = lo.abs().max(hi.abs());
        let sci = big >= 1e7 || step < 1e-4;
        let digits = (big.log10().floor() - step.log10().floor()).clamp(0.0, 6.0) as usize;
        let k0 = (lo / step).ceil();
        for i in 0..40 {
            let v = (k0 + i as f64) * step;
            if v > hi {
                break;
            }
            let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
            ticks.push((v, if sci { format!("{v:.digits$e}") } else { format!("{v:.dec$}") }));
        }
    }
    (lo, hi, ticks)
}

/// Log axis (returned bounds are log10) for positive finite min <= max, with
/// ticks at decades (plus 2× and 5× when the range is short).
fn log_axis(min: f64, max: f64) -> (f64, f64, Ticks) {
    let (a, b) = (min.log10(), max.log10());
    let pad = (b - a) * 0.06;
    let (lo, hi) = (a - pad, b + pad);
    let label = |m: f64, d: i32| {
        if (-5..=5).contains(&d) {
            format!("{:.*}", (-d).max(0) as usize, m * 10f64.powi(d))
        } else {
            format!("{m}e{d}")
        }
    };
    let mut ticks = Vec::new();
    if hi - lo < 3.5 {
        for d in lo.floor() as i32..=hi.ceil() as i32 {
            for m in [1.0f64, 2.0, 5.0] {
                let t = m.log10() + d as f64;
                if t >= lo && t <= hi {
                    ticks.push((t, label(m, d)));
                }
            }
        }
    } else {
        let every = ((hi - lo) / 8.0).ceil().max(1.0) as i32;
        for d in lo.ceil() as i32..=hi.floor() as i32 {
            if d.rem_euclid(every) == 0 {
                ticks.push((d as f64, label(1.0, d)));
            }
        }
    }
    (lo, hi, ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(label: &str, bpw: f64, ppl: f64, kld: f64) -> Point {
        Point { label: label.into(), bpw, ppl, ppl_err: 0.1, kld }
    }
    fn sample() -> Vec<Point> {
        vec![
            p("q8_0", 8.5, 26.7, 0.0005),
            p("q6_k", 6.6, 26.8, 0.002),
            p("q5_k_m", 5.7, 27.0, 0.008),
            p("q4_k_m", 4.9, 27.6, 0.03),
            p("q4_0", 4.5, 28.9, 0.07),
            p("q3_k_m", 3.9, 31.0, 0.15),
            p("q2_k", 3.2, 45.0, 0.6),
            p("gptq:4:128", 4.6, 27.9, 0.04),
        ]
    }

    /// Decodes with the `png` crate: (width, height, RGB bytes).
    fn decode(b: &[u8]) -> (u32, u32, Vec<u8>) {
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
        let mut r = ::png::Decoder::new(std::io::Cursor::new(b)).read_info().expect("png header");
        let mut buf = vec![0; r.output_buffer_size().expect("size")];
        let info = r.next_frame(&mut buf).expect("png data");
        assert_eq!((info.color_type, info.bit_depth), (::png::ColorType::Rgb, ::png::BitDepth::Eight));
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn pareto_cases() {
        let n = f64::NAN;
        assert_eq!(pareto_front(&[]), Vec::<bool>::new());
        assert_eq!(
            pareto_front(&[(1.0, 3.0), (2.0, 2.0), (3.0, 1.0), (3.0, 3.0)]),
            [true, true, true, false]
        );
        assert_eq!(pareto_front(&[(1.0, 1.0), (1.0, 1.0)]), [true, true]); // exact tie
        assert_eq!(pareto_front(&[(1.0, 2.0), (1.0, 1.0)]), [false, true]); // same bpw
        assert_eq!(pareto_front(&[(2.0, 1.0), (1.0, 1.0)]), [false, true]); // same metric
        assert_eq!(pareto_front(&[(n, 0.0), (1.0, n), (2.0, 5.0)]), [false, false, true]);
        assert_eq!(
            pareto_front(&[(0.0, f64::NEG_INFINITY), (1.0, f64::INFINITY), (2.0, 1.0)]),
            [false, false, true]
        );
        let s: Vec<(f64, f64)> = sample().iter().map(|p| (p.bpw, p.ppl)).collect();
        assert_eq!(pareto_front(&s), [true; 8]); // gptq:4:128 (4.6, 27.9) beats q4_0 on PPL
    }

    #[test]
    fn svg_labels_escaped_and_deterministic() {
        let mut pts = sample();
        pts.push(p("a<b&c\"d'>e", 5.0, 28.0, 0.01));
        let s = svg(&pts, "t & <t>", Some(26.5)).expect("svg");
        assert_eq!(s, svg(&pts, "t & <t>", Some(26.5)).expect("svg"));
        for q in &pts[..8] {
            assert!(s.contains(&format!(">\n{}\n</text>", q.label)), "{}", q.label);
        }
        assert!(s.contains("a&lt;b&amp;c&quot;d&apos;&gt;e") && s.contains("t &amp; &lt;t&gt;"));
        assert!(s.contains("viewBox=\"0 0 1200 520\"") && s.contains("font-family=\"sans-serif\""));
        assert!(
            s.contains(">\nbase\n</text>") && s.contains("(log scale)") && s.contains(">\n0.01\n</text>")
        );
        assert!(s.contains(">\nbits per weight\n</text>") && s.contains(">\nPareto front\n</text>"));
        assert!(s.trim_end().ends_with("</svg>") && !s.contains("NaN") && !s.contains("inf"));
        // crude well-formedness: markup and text alternate, entities are known
        let body = &s[s.find("<svg").unwrap_or(0)..];
        for seg in body.split('<').skip(1) {
            assert_eq!(seg.matches('>').count(), 1, "{seg}");
            let txt = &seg[seg.find('>').unwrap_or(0) + 1..];
            for e in txt.split('&').skip(1) {
                assert!(["amp;", "lt;", "gt;", "quot;", "apos;"].iter().any(|k| e.starts_with(k)));
            }
        }
        assert_eq!(body.matches("<text").count(), body.matches("</text>").count());
    }

    #[test]
    fn png_valid_and_not_blank() {
        let b = png(&sample(), "sweep", Some(26.5)).expect("png");
        assert_eq!(b, png(&sample(), "sweep", Some(26.5)).expect("png"));
        let (w, h, rgb) = decode(&b);
        assert_eq!((w, h), (W as u32, H as u32));
        let ink = rgb.chunks(3).filter(|px| px != &[255, 255, 255]).count();
        assert!(ink > 5000, "{ink}");
        // Pareto-front blue and the base line's red are there.
        assert!(rgb.chunks(3).any(|px| px == [28, 74, 150]) && rgb.chunks(3).any(|px| px == [200, 50, 40]));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let (n, i) = (f64::NAN, f64::INFINITY);
        let cases: Vec<Vec<Point>> = vec![
            vec![],
            vec![p("only", 4.0, 10.0, 0.1)],
            vec![p("a", 4.0, 10.0, 0.1), p("b", 4.0, 10.0, 0.1)],
            vec![p("nan", n, n, n), p("inf", i, -i, i), p("ok", 5.0, 20.0, 0.0), p("z", 6.0, 19.0, 0.0)],
            vec![
                p("huge", 1e300, 1e308, 1e308),
                p("tiny", -1e308, 1e-308, 5e-324),
                p("neg", 3.0, -5.0, -1.0),
            ],
            vec![p("", 1e-300, 1e-300, 1e-300), p("\u{1}\u{fffe}\u{e9}\u{1F600}\n", 2e-300, 3e-300, 1e300)],
            vec![Point { label: "x".repeat(500), bpw: 4.0, ppl: 10.0, ppl_err: 1e308, kld: 0.0 }],
            vec![p("z1", 3.0, 20.0, 0.0), p("z2", 4.0, 19.0, 0.0), p("z3", 5.0, 18.0, 0.0)],
            (0..60)
                .map(|k| {
                    p(&format!("p{k}"), k as f64 * 0.1, 100.0 / (k as f64 + 1.0), 0.5 / (k as f64 + 1.0))
                })
                .collect(),
        ];
        for c in &cases {
            for base in [None, Some(12.0), Some(n), Some(1e300)] {
                let s = svg(c, "\u{0}<title>", base).expect("svg");
                assert!(!s.contains("NaN") && !s.contains('\u{0}') && !s.contains('\u{fffe}'));
                let (_, _, rgb) = decode(&png(c, "\u{b1}\u{2603}", base).expect("png"));
                assert!(rgb.iter().any(|&v| v != 255));
            }
        }
        assert!(svg(&[], "empty", None).expect("svg").contains(">\nno data\n</text>"));
        assert!(svg(&[p("nan", n, n, n)], "t", None).expect("svg").contains("1 skipped (non-finite)"));
    }

    /// `QK_PLOT_DEMO=/tmp/x cargo test -p quantkit-cli demo -- --ignored` writes /tmp/x.{png,svg}
    /// from the table in docs/batch.md (docs/sweep-smollm2.png is that PNG).
    #[test]
    #[ignore]
    fn demo_picture() {
        let q = |label: &str, bpw, ppl, ppl_err, kld| Point { label: label.into(), bpw, ppl, ppl_err, kld };
        let pts = vec![
            q("q8_0", 8.506, 26.6328, 1.6184, 0.001134),
            q("q6_k", 8.124, 26.5659, 1.6134, 0.002836),
            q("q5_k_m", 6.561, 26.5859, 1.6167, 0.001906),
            q("q4_k_m", 6.165, 27.1541, 1.6545, 0.029049),
            q("q4_0", 5.359, 29.8296, 1.7613, 0.184308),
            q("q3_k_m", 5.455, 28.6489, 1.7247, 0.083178),
            q("q2_k", 5.139, 32.2809, 1.8856, 0.291661),
            q("gptq:q4_k_m", 6.165, 26.8773, 1.6380, 0.022833),
            q("gptq:4:128", 6.704, 40.2661, 2.5355, 0.393420),
            q("awq:4:128", 6.780, 33.5330, 2.0814, 0.197354),
        ];
        let t = "smollm2-135m-hf: PPL and KLD vs bits per weight (2550 tokens of wiki.test.raw)";
        if let Ok(path) = std::env::var("QK_PLOT_DEMO") {
            std::fs::write(format!("{path}.png"), png(&pts, t, Some(26.62)).expect("png")).expect("write");
            std::fs::write(format!("{path}.svg"), svg(&pts, t, Some(26.62)).expect("svg")).expect("write");
        }
    }
}

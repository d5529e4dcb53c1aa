//! Sweep plots for `quantkit sweep`: perplexity (PPL) and KL divergence (KLD) of
//! quantized variants against bits per weight (bpw), with the Pareto front marked.
//!
//! The picture is built once as a small display list ([`Shape`]) in pixel
//! coordinates of a 1200×520 canvas. [`svg`] serialises that list; [`png`]
//! rasterises it (Bresenham lines, circles, an embedded 5×7 bitmap font) and
//! writes a palette PNG with its own zlib stream (one fixed-Huffman deflate
//! block using run / previous-row matches). Std only, deterministic output, and
//! no input (empty, NaN, inf, huge or tiny values, odd labels) makes it panic.

use std::fmt::Write as _;

mod png;

use png::encode_png;

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

/// Two panels side by side: left PPL vs bpw (with ±ppl_err error bars), right
/// KLD vs bpw. The KLD axis is logarithmic when no KLD is negative, at least
/// two are positive and max/min of the positive ones exceeds 20; KLD == 0
/// points are then clamped to the axis bottom. Front points are filled and
/// joined, others hollow; every point carries its label. `base_ppl` adds a
/// dashed reference line labelled "base" to the PPL panel. Points whose bpw or
/// metric is NaN/inf are skipped in that panel (and counted in a note).
pub fn svg(points: &[Point], title: &str, base_ppl: Option<f64>) -> String {
    let mut s = String::new();
    s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(s, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\">");
    let _ = writeln!(s, "<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"{}\"/>", hex(Col::Bg));
    for sh in scene(points, title, base_ppl) {
        match sh {
            Shape::Line { a, b, w, dash, c } => {
                let d = if dash { " stroke-dasharray=\"6 4\"" } else { "" };
                let _ = writeln!(
                    s,
                    "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"{}\"{d}/>",
                    num(a.0),
                    num(a.1),
                    num(b.0),
                    num(b.1),
                    hex(c),
                    num(w)
                );
            }
            Shape::Rect { x, y, w, h, c } => {
                let _ = writeln!(
                    s,
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"{}\"/>",
                    num(x),
                    num(y),
                    num(w),
                    num(h),
                    hex(c)
                );
            }
            Shape::Dot { x, y, r, fill, c } => {
                let f = if fill { hex(c) } else { hex(Col::Bg) };
                let _ = writeln!(
                    s,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{f}\" stroke=\"{}\" stroke-width=\"1.5\"/>",
                    num(x),
                    num(y),
                    num(r),
                    hex(c)
                );
            }
            Shape::Text { x, y, s: t, big, anchor, c } => {
                let a = match anchor {
                    Anchor::Start => "start",
                    Anchor::Middle => "middle",
                    Anchor::End => "end",
                };
                let size = if big { 20.0 } else { 11.0 };
                let _ = writeln!(
                    s,
                    "<text x=\"{}\" y=\"{}\" font-size=\"{}\" fill=\"{}\" text-anchor=\"{a}\">{}</text>",
                    num(x),
                    num(y + 0.35 * size),
                    num(size),
                    hex(c),
                    xml_escape(&t)
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// The same picture as [`svg`], rasterised to the bytes of a 1200×520 8-bit
/// palette PNG.
pub fn png(points: &[Point], title: &str, base_ppl: Option<f64>) -> Vec<u8> {
    let mut cv = Canvas { px: vec![Col::Bg as u8; W * H] };
    for sh in scene(points, title, base_ppl) {
        match sh {
            Shape::Line { a, b, w, dash, c } => cv.line(a, b, w, dash, c),
            Shape::Rect { x, y, w, h, c } => {
                let (x1, y1) = (x + w, y + h);
                for (a, b) in [((x, y), (x1, y)), ((x1, y), (x1, y1)), ((x1, y1), (x, y1)), ((x, y1), (x, y))]
                {
                    cv.line(a, b, 1.0, false, c);
                }
            }
            Shape::Dot { x, y, r, fill, c } => cv.dot(x, y, r, fill, c),
            Shape::Text { x, y, s, big, anchor, c } => cv.text(x, y, &s, big, anchor, c),
        }
    }
    encode_png(W as u32, H as u32, &PALETTE, &cv.px)
}

// ---------------------------------------------------------------- scene ----

const W: usize = 1200;
const H: usize = 520;
/// Top and bottom pixel rows of both plot areas.
const PY0: f64 = 88.0;
const PY1: f64 = 452.0;

/// Palette entries (the discriminant is the PNG palette index).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Col {
    Bg = 0,
    Axis,
    Grid,
    Front,
    Other,
    Label,
    Base,
}
const PALETTE: [[u8; 3]; 7] = [
    [255, 255, 255],
    [40, 40, 40],
    [226, 226, 226],
    [28, 74, 150],
    [150, 150, 150],
    [70, 70, 70],
    [200, 50, 40],
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Anchor {
    Start,
    Middle,
    End,
}

/// Display-list element; coordinates in canvas pixels, text `y` is its vertical centre.
#[derive(Debug)]
enum Shape {
    Line {
        a: (f64, f64),
        b: (f64, f64),
        w: f64,
        dash: bool,
        c: Col,
    },
    /// Outline only.
    Rect {
        x: f64,
        y: f64,
        w: f64,
        h: f64,
        c: Col,
    },
    /// Circle; a hollow one has a background-filled interior.
    Dot {
        x: f64,
        y: f64,
        r: f64,
        fill: bool,
        c: Col,
    },
    /// `big` = 2× font (title).
    Text {
        x: f64,
        y: f64,
        s: String,
        big: bool,
        anchor: Anchor,
        c: Col,
    },
}

fn line(a: (f64, f64), b: (f64, f64), w: f64, dash: bool, c: Col) -> Shape {
    Shape::Line { a, b, w, dash, c }
}
fn text(x: f64, y: f64, s: &str, anchor: Anchor, c: Col) -> Shape {
    Shape::Text { x, y, s: s.to_string(), big: false, anchor, c }
}

/// Approximate rendered width in pixels (exact for the bitmap font).
fn text_w(s: &str, big: bool) -> f64 {
    let k = if big { 2.0 } else { 1.0 };
    (s.chars().count() as f64 * 6.0 - 1.0).max(0.0) * k
}

/// Bounding box (x0, y0, x1, y1) of a small text.
fn text_box(x: f64, y: f64, s: &str, anchor: Anchor) -> [f64; 4] {
    let w = text_w(s, false);
    let x0 = match anchor {
        Anchor::Start => x,
        Anchor::Middle => x - w / 2.0,
        Anchor::End => x - w,
    };
    [x0 - 1.0, y - 5.0, x0 + w + 1.0, y + 5.0]
}

fn overlap(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    ((a[2].min(b[2]) - a[0].max(b[0])).max(0.0)) * ((a[3].min(b[3]) - a[1].max(b[1])).max(0.0))
}

/// Number of samples (every ~3 px) of segment a–c that fall inside box `b`.
fn seg_hits(b: &[f64; 4], a: (f64, f64), c: (f64, f64)) -> f64 {
    let n = ((c.0 - a.0).hypot(c.1 - a.1) / 3.0).ceil().clamp(1.0, 400.0) as usize;
    (0..=n)
        .map(|k| k as f64 / n.max(1) as f64)
        .filter(|t| {
            let (x, y) = (a.0 + t * (c.0 - a.0), a.1 + t * (c.1 - a.1));
            x >= b[0] && x <= b[2] && y >= b[1] && y <= b[3]
        })
        .count() as f64
}

/// Truncates to at most `n` characters, ending in "..." when cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n.saturating_sub(3)).chain("...".chars()).collect()
    }
}

/// One plottable value of a panel.
struct Datum {
    x: f64,
    y: f64,
    err: f64,
    label: String,
}

fn scene(points: &[Point], title: &str, base_ppl: Option<f64>) -> Vec<Shape> {
    let mut sh = Vec::new();
    sh.push(Shape::Text {
        x: W as f64 / 2.0,
        y: 22.0,
        s: clip(title, 95),
        big: true,
        anchor: Anchor::Middle,
        c: Col::Axis,
    });
    let base = base_ppl.filter(|b| b.is_finite());
    let has_err = points
        .iter()
        .any(|p| p.bpw.is_finite() && p.ppl.is_finite() && p.ppl_err.is_finite() && p.ppl_err > 0.0);
    legend(&mut sh, has_err, base.is_some());
    let label = |p: &Point| clip(&p.label, 32);
    let ppl: Vec<Datum> = points
        .iter()
        .filter(|p| p.bpw.is_finite() && p.ppl.is_finite())
        .map(|p| {
            let e = p.ppl_err;
            let err = if e.is_finite() && e > 0.0 && (p.ppl - e).is_finite() && (p.ppl + e).is_finite() {
                e
            } else {
                0.0
            };
            Datum { x: p.bpw, y: p.ppl, err, label: label(p) }
        })
        .collect();
    let kld: Vec<Datum> = points
        .iter()
        .filter(|p| p.bpw.is_finite() && p.kld.is_finite())
        .map(|p| Datum { x: p.bpw, y: p.kld, err: 0.0, label: label(p) })
        .collect();
    panel(&mut sh, 75.0, 575.0, "perplexity", &ppl, points.len() - ppl.len(), base, false);
    panel(&mut sh, 680.0, 1180.0, "KL divergence", &kld, points.len() - kld.len(), None, true);
    sh
}

/// Legend row under the title.
fn legend(sh: &mut Vec<Shape>, err: bool, base: bool) {
    let mut items = vec![(0, "Pareto front"), (1, "dominated")];
    if err {
        items.push((2, "PPL \u{b1} error"));
    }
    if base {
        items.push((3, "base PPL"));
    }
    let total: f64 = items.iter().map(|(_, t)| 22.0 + text_w(t, false) + 24.0).sum::<f64>() - 24.0;
    let (mut x, y) = (W as f64 / 2.0 - total / 2.0, 50.0);
    for (kind, t) in items {
        match kind {
            0 => {
                sh.push(line((x, y), (x + 16.0, y), 1.5, false, Col::Front));
                sh.push(Shape::Dot { x: x + 8.0, y, r: 4.0, fill: true, c: Col::Front });
            }
            1 => sh.push(Shape::Dot { x: x + 8.0, y, r: 4.0, fill: false, c: Col::Other }),
            2 => {
                sh.push(line((x + 8.0, y - 6.0), (x + 8.0, y + 6.0), 1.0, false, Col::Front));
                sh.push(line((x + 5.0, y - 6.0), (x + 11.0, y - 6.0), 1.0, false, Col::Front));
                sh.push(line((x + 5.0, y + 6.0), (x + 11.0, y + 6.0), 1.0, false, Col::Front));
            }
            _ => sh.push(line((x, y), (x + 16.0, y), 1.0, true, Col::Base)),
        }
        sh.push(text(x + 22.0, y, t, Anchor::Start, Col::Label));
        x += 22.0 + text_w(t, false) + 24.0;
    }
}

/// Maps axis-space values (log10 of the data on a log axis) to pixels.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    p0: f64,
    p1: f64,
}
impl Axis {
    fn raw(&self, t: f64) -> f64 {
        self.p0 + (t - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)
    }
    /// Data value to pixel; non-positive values on a log axis go to the axis bottom.
    fn px(&self, v: f64) -> f64 {
        if self.log {
            if v > 0.0 {
                self.raw(v.log10())
            } else {
                self.p0
            }
        } else {
            self.raw(v)
        }
    }
}

/// One panel in columns `px0..px1`: axes, ticks, grid, reference line, front
/// line, error bars, markers and labels.
#[allow(clippy::too_many_arguments)]
fn panel(
    sh: &mut Vec<Shape>,
    px0: f64,
    px1: f64,
    ytitle: &str,
    data: &[Datum],
    skipped: usize,
    base: Option<f64>,
    want_log: bool,
) {
    let xmid = (px0 + px1) / 2.0;
    sh.push(text(xmid, PY1 + 36.0, "bits per weight", Anchor::Middle, Col::Axis));
    if skipped > 0 {
        sh.push(text(px1, PY0 - 14.0, &format!("{skipped} skipped (non-finite)"), Anchor::End, Col::Other));
    }
    let frame = Shape::Rect { x: px0, y: PY0, w: px1 - px0, h: PY1 - PY0, c: Col::Axis };
    if data.is_empty() {
        sh.push(text(px0, PY0 - 14.0, ytitle, Anchor::Start, Col::Axis));
        sh.push(text(xmid, (PY0 + PY1) / 2.0, "no data", Anchor::Middle, Col::Label));
        sh.push(frame);
        return;
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
    sh.push(text(
        px0,
        PY0 - 14.0,
        &format!("{ytitle}{}", if log { " (log scale)" } else { "" }),
        Anchor::Start,
        Col::Axis,
    ));
    let (xl, xh, xt) = lin_axis(xlo, xhi);
    let (yl, yh, yt) = if log {
        log_axis(plo, phi)
    } else {
        let (a, b) = fold(&mut data.iter().flat_map(|d| [d.y - d.err, d.y + d.err]).chain(base));
        lin_axis(a, b)
    };
    let xa = Axis { lo: xl, hi: xh, log: false, p0: px0, p1: px1 };
    let ya = Axis { lo: yl, hi: yh, log, p0: PY1, p1: PY0 };
    for (v, s) in &xt {
        let x = xa.raw(*v);
        sh.push(line((x, PY0), (x, PY1), 1.0, false, Col::Grid));
        sh.push(line((x, PY1), (x, PY1 + 5.0), 1.0, false, Col::Axis));
        sh.push(text(x, PY1 + 14.0, s, Anchor::Middle, Col::Axis));
    }
    for (v, s) in &yt {
        let y = ya.raw(*v);
        sh.push(line((px0, y), (px1, y), 1.0, false, Col::Grid));
        sh.push(line((px0 - 5.0, y), (px0, y), 1.0, false, Col::Axis));
        sh.push(text(px0 - 8.0, y, s, Anchor::End, Col::Axis));
    }
    // Obstacles for label placement: markers and the "base" tag.
    let pts: Vec<(f64, f64)> = data.iter().map(|d| (xa.px(d.x), ya.px(d.y))).collect();
    let mut taken: Vec<[f64; 4]> = pts.iter().map(|&(x, y)| [x - 5.0, y - 5.0, x + 5.0, y + 5.0]).collect();
    let mut segs: Vec<((f64, f64), (f64, f64))> = Vec::new();
    if let Some(b) = base {
        let y = ya.px(b);
        sh.push(line((px0, y), (px1, y), 1.0, true, Col::Base));
        sh.push(text(px0 + 4.0, y - 8.0, "base", Anchor::Start, Col::Base));
        taken.push(text_box(px0 + 4.0, y - 8.0, "base", Anchor::Start));
        segs.push(((px0, y), (px1, y)));
    }
    let front = pareto_front(&data.iter().map(|d| (d.x, d.y)).collect::<Vec<_>>());
    let mut order: Vec<usize> = (0..data.len()).filter(|&i| front[i]).collect();
    order.sort_by(|&i, &j| data[i].x.total_cmp(&data[j].x).then(data[i].y.total_cmp(&data[j].y)));
    for w in order.windows(2) {
        sh.push(line(pts[w[0]], pts[w[1]], 1.5, false, Col::Front));
        segs.push((pts[w[0]], pts[w[1]]));
    }
    for (i, d) in data.iter().enumerate() {
        let c = if front[i] { Col::Front } else { Col::Other };
        if d.err > 0.0 && !log {
            let (x, y0, y1) = (pts[i].0, ya.px(d.y - d.err), ya.px(d.y + d.err));
            sh.push(line((x, y0), (x, y1), 1.0, false, c));
            segs.push(((x, y0), (x, y1)));
            sh.push(line((x - 3.0, y0), (x + 3.0, y0), 1.0, false, c));
            sh.push(line((x - 3.0, y1), (x + 3.0, y1), 1.0, false, c));
        }
    }
    for (i, &(x, y)) in pts.iter().enumerate() {
        let c = if front[i] { Col::Front } else { Col::Other };
        sh.push(Shape::Dot { x, y, r: 4.0, fill: front[i], c });
    }
    // Greedy label placement: first candidate inside the plot that overlaps
    // nothing (labels, markers, lines) so far, else the least-overlap one.
    const CAND: [(f64, f64, Anchor); 12] = [
        (8.0, 0.0, Anchor::Start),
        (-8.0, 0.0, Anchor::End),
        (6.0, -10.0, Anchor::Start),
        (6.0, 10.0, Anchor::Start),
        (-6.0, -10.0, Anchor::End),
        (-6.0, 10.0, Anchor::End),
        (0.0, -13.0, Anchor::Middle),
        (0.0, 13.0, Anchor::Middle),
        (8.0, -21.0, Anchor::Start),
        (8.0, 21.0, Anchor::Start),
        (-8.0, -21.0, Anchor::End),
        (-8.0, 21.0, Anchor::End),
    ];
    for (i, d) in data.iter().enumerate() {
        if d.label.is_empty() {
            continue;
        }
        let (px, py) = pts[i];
        let mut best: Option<(f64, f64, f64, Anchor, [f64; 4])> = None;
        for &(dx, dy, an) in &CAND {
            let (x, y) = (px + dx, py + dy);
            let b = text_box(x, y, &d.label, an);
            let outside = (px0 + 2.0 - b[0]).max(0.0)
                + (b[2] - px1 + 2.0).max(0.0)
                + (PY0 + 2.0 - b[1]).max(0.0)
                + (b[3] - PY1 + 2.0).max(0.0);
            let cost = outside * 100.0
                + taken.iter().enumerate().filter(|&(k, _)| k != i).map(|(_, t)| overlap(&b, t)).sum::<f64>()
                + segs.iter().map(|&(a, c)| 20.0 * seg_hits(&b, a, c)).sum::<f64>();
            if best.as_ref().is_none_or(|bb| cost < bb.0) {
                best = Some((cost, x, y, an, b));
            }
            if cost == 0.0 {
                break;
            }
        }
        if let Some((_, x, y, an, b)) = best {
            sh.push(text(x, y, &d.label, an, Col::Label));
            taken.push(b);
        }
    }
    sh.push(frame);
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

// ------------------------------------------------------------------ svg ----

fn hex(c: Col) -> String {
    let [r, g, b] = PALETTE[c as usize];
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// Fixed-format coordinate (one decimal), always finite.
fn num(v: f64) -> String {
    let v = if v.is_finite() { v.clamp(-1e5, 1e5) } else { 0.0 };
    format!("{v:.1}")
}

/// Escapes XML specials and replaces characters not allowed in XML 1.0 text.
fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if c.is_control() || c == '\u{fffe}' || c == '\u{ffff}' => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

// ----------------------------------------------------------- rasteriser ----

/// Off-canvas-safe pixel coordinate.
fn ip(v: f64) -> i64 {
    if v.is_finite() {
        v.clamp(-1e4, 1e4).round() as i64
    } else {
        -1
    }
}

/// Palette-indexed W×H image.
struct Canvas {
    px: Vec<u8>,
}
impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: Col) {
        if (0..W as i64).contains(&x) && (0..H as i64).contains(&y) {
            self.px[y as usize * W + x as usize] = c as u8;
        }
    }
    /// Bresenham line with a square brush of width `w`; dashed = 6 on, 4 off.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), w: f64, dash: bool, c: Col) {
        let (mut x, mut y, x1, y1) = (ip(a.0), ip(a.1), ip(b.0), ip(b.1));
        let t = if w.is_finite() { (w.round() as i64).clamp(1, 5) } else { 1 };
        let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
        let (sx, sy) = (if x < x1 { 1 } else { -1 }, if y < y1 { 1 } else { -1 });
        let (mut err, mut k) = (dx + dy, 0u64);
        loop {
            if !dash || k % 10 < 6 {
                for oy in 0..t {
                    for ox in 0..t {
                        self.set(x - (t - 1) / 2 + ox, y - (t - 1) / 2 + oy, c);
                    }
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
            k += 1;
        }
    }
    /// Filled disc, or a ~1.5 px ring with a background interior.
    fn dot(&mut self, cx: f64, cy: f64, r: f64, fill: bool, c: Col) {
        let (x0, y0, r) = (ip(cx), ip(cy), if r.is_finite() { r.clamp(0.0, 50.0) } else { 0.0 });
        let ri = r.ceil() as i64 + 1;
        for dy in -ri..=ri {
            for dx in -ri..=ri {
                let d = ((dx * dx + dy * dy) as f64).sqrt();
                if d <= r + 0.3 {
                    self.set(x0 + dx, y0 + dy, if fill || d > r - 1.3 { c } else { Col::Bg });
                }
            }
        }
    }
    /// Bitmap text, `y` = vertical centre; `big` doubles the glyph size.
    fn text(&mut self, x: f64, y: f64, s: &str, big: bool, anchor: Anchor, c: Col) {
        let k: i64 = if big { 2 } else { 1 };
        let w = text_w(s, big);
        let left = ip(match anchor {
            Anchor::Start => x,
            Anchor::Middle => x - w / 2.0,
            Anchor::End => x - w,
        });
        let top = ip(y - 3.5 * k as f64);
        for (n, ch) in s.chars().enumerate() {
            let gx = left + n as i64 * 6 * k;
            if gx > W as i64 {
                break;
            }
            let (rows, drop) = glyph(ch);
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for o in 0..k * k {
                            self.set(gx + col * k + o % k, top + (row as i64 + drop) * k + o / k, c);
                        }
                    }
                }
            }
        }
    }
}

/// Glyph rows and how many rows it is drawn below the cell top; non-ASCII
/// other than '±' renders as '?'.
fn glyph(ch: char) -> ([u8; 7], i64) {
    let drop = match ch {
        'g' | 'p' | 'q' | 'y' => 2,
        'j' | '_' => 1,
        _ => 0,
    };
    (
        FONT[match ch {
            ' '..='~' => ch as usize - 32,
            '\u{b1}' => 95,
            _ => '?' as usize - 32,
        }],
        drop,
    )
}

/// 5×7 font for ASCII 0x20..=0x7E, then '±'. Seven rows top first; bit 4 = leftmost column.
/// g, p, q, y (j, _) are drawn 2 (1) rows lower, so their last rows form descenders.
#[rustfmt::skip]
const FONT: [[u8; 7]; 96] = [
    [0x00,0x00,0x00,0x00,0x00,0x00,0x00], [0x04,0x04,0x04,0x04,0x04,0x00,0x04], [0x0A,0x0A,0x0A,0x00,0x00,0x00,0x00], //  !"
    [0x0A,0x0A,0x1F,0x0A,0x1F,0x0A,0x0A], [0x04,0x0F,0x14,0x0E,0x05,0x1E,0x04], [0x18,0x19,0x02,0x04,0x08,0x13,0x03], // #$%
    [0x0C,0x12,0x14,0x08,0x15,0x12,0x0D], [0x04,0x04,0x08,0x00,0x00,0x00,0x00], [0x02,0x04,0x08,0x08,0x08,0x04,0x02], // &'(
    [0x08,0x04,0x02,0x02,0x02,0x04,0x08], [0x00,0x04,0x15,0x0E,0x15,0x04,0x00], [0x00,0x04,0x04,0x1F,0x04,0x04,0x00], // )*+
    [0x00,0x00,0x00,0x00,0x0C,0x04,0x08], [0x00,0x00,0x00,0x1F,0x00,0x00,0x00], [0x00,0x00,0x00,0x00,0x00,0x0C,0x0C], // ,-.
    [0x00,0x01,0x02,0x04,0x08,0x10,0x00], [0x0E,0x11,0x13,0x15,0x19,0x11,0x0E], [0x04,0x0C,0x04,0x04,0x04,0x04,0x0E], // /01
    [0x0E,0x11,0x01,0x02,0x04,0x08,0x1F], [0x1F,0x02,0x04,0x02,0x01,0x11,0x0E], [0x02,0x06,0x0A,0x12,0x1F,0x02,0x02], // 234
    [0x1F,0x10,0x1E,0x01,0x01,0x11,0x0E], [0x06,0x08,0x10,0x1E,0x11,0x11,0x0E], [0x1F,0x01,0x02,0x04,0x08,0x08,0x08], // 567
    [0x0E,0x11,0x11,0x0E,0x11,0x11,0x0E], [0x0E,0x11,0x11,0x0F,0x01,0x02,0x0C], [0x00,0x0C,0x0C,0x00,0x0C,0x0C,0x00], // 89:
    [0x00,0x0C,0x0C,0x00,0x0C,0x04,0x08], [0x02,0x04,0x08,0x10,0x08,0x04,0x02], [0x00,0x00,0x1F,0x00,0x1F,0x00,0x00], // ;<=
    [0x08,0x04,0x02,0x01,0x02,0x04,0x08], [0x0E,0x11,0x01,0x02,0x04,0x00,0x04], [0x0E,0x11,0x01,0x0D,0x15,0x15,0x0E], // >?@
    [0x0E,0x11,0x11,0x11,0x1F,0x11,0x11], [0x1E,0x11,0x11,0x1E,0x11,0x11,0x1E], [0x0E,0x11,0x10,0x10,0x10,0x11,0x0E], // ABC
    [0x1C,0x12,0x11,0x11,0x11,0x12,0x1C], [0x1F,0x10,0x10,0x1E,0x10,0x10,0x1F], [0x1F,0x10,0x10,0x1E,0x10,0x10,0x10], // DEF
    [0x0E,0x11,0x10,0x17,0x11,0x11,0x0F], [0x11,0x11,0x11,0x1F,0x11,0x11,0x11], [0x0E,0x04,0x04,0x04,0x04,0x04,0x0E], // GHI
    [0x07,0x02,0x02,0x02,0x02,0x12,0x0C], [0x11,0x12,0x14,0x18,0x14,0x12,0x11], [0x10,0x10,0x10,0x10,0x10,0x10,0x1F], // JKL
    [0x11,0x1B,0x15,0x15,0x11,0x11,0x11], [0x11,0x11,0x19,0x15,0x13,0x11,0x11], [0x0E,0x11,0x11,0x11,0x11,0x11,0x0E], // MNO
    [0x1E,0x11,0x11,0x1E,0x10,0x10,0x10], [0x0E,0x11,0x11,0x11,0x15,0x12,0x0D], [0x1E,0x11,0x11,0x1E,0x14,0x12,0x11], // PQR
    [0x0F,0x10,0x10,0x0E,0x01,0x01,0x1E], [0x1F,0x04,0x04,0x04,0x04,0x04,0x04], [0x11,0x11,0x11,0x11,0x11,0x11,0x0E], // STU
    [0x11,0x11,0x11,0x11,0x11,0x0A,0x04], [0x11,0x11,0x11,0x15,0x15,0x15,0x0A], [0x11,0x11,0x0A,0x04,0x0A,0x11,0x11], // VWX
    [0x11,0x11,0x11,0x0A,0x04,0x04,0x04], [0x1F,0x01,0x02,0x04,0x08,0x10,0x1F], [0x0E,0x08,0x08,0x08,0x08,0x08,0x0E], // YZ[
    [0x00,0x10,0x08,0x04,0x02,0x01,0x00], [0x0E,0x02,0x02,0x02,0x02,0x02,0x0E], [0x04,0x0A,0x11,0x00,0x00,0x00,0x00], // \]^
    [0x00,0x00,0x00,0x00,0x00,0x00,0x1F], [0x08,0x04,0x02,0x00,0x00,0x00,0x00], [0x00,0x00,0x0E,0x01,0x0F,0x11,0x0F], // _`a
    [0x10,0x10,0x16,0x19,0x11,0x11,0x1E], [0x00,0x00,0x0E,0x10,0x10,0x11,0x0E], [0x01,0x01,0x0D,0x13,0x11,0x11,0x0F], // bcd
    [0x00,0x00,0x0E,0x11,0x1F,0x10,0x0E], [0x06,0x09,0x08,0x1C,0x08,0x08,0x08], [0x0F,0x11,0x11,0x11,0x0F,0x01,0x0E], // efg
    [0x10,0x10,0x16,0x19,0x11,0x11,0x11], [0x04,0x00,0x0C,0x04,0x04,0x04,0x0E], [0x02,0x00,0x06,0x02,0x02,0x12,0x0C], // hij
    [0x10,0x10,0x12,0x14,0x18,0x14,0x12], [0x0C,0x04,0x04,0x04,0x04,0x04,0x0E], [0x00,0x00,0x1A,0x15,0x15,0x11,0x11], // klm
    [0x00,0x00,0x16,0x19,0x11,0x11,0x11], [0x00,0x00,0x0E,0x11,0x11,0x11,0x0E], [0x1E,0x11,0x11,0x11,0x1E,0x10,0x10], // nop
    [0x0F,0x11,0x11,0x11,0x0F,0x01,0x01], [0x00,0x00,0x16,0x19,0x10,0x10,0x10], [0x00,0x00,0x0E,0x10,0x0E,0x01,0x1E], // qrs
    [0x08,0x08,0x1C,0x08,0x08,0x09,0x06], [0x00,0x00,0x11,0x11,0x11,0x13,0x0D], [0x00,0x00,0x11,0x11,0x11,0x0A,0x04], // tuv
    [0x00,0x00,0x11,0x11,0x15,0x15,0x0A], [0x00,0x00,0x11,0x0A,0x04,0x0A,0x11], [0x11,0x11,0x11,0x11,0x0F,0x01,0x0E], // wxy
    [0x00,0x00,0x1F,0x02,0x04,0x08,0x1F], [0x02,0x04,0x04,0x08,0x04,0x04,0x02], [0x04,0x04,0x04,0x04,0x04,0x04,0x04], // z{|
    [0x08,0x04,0x04,0x02,0x04,0x04,0x08], [0x00,0x00,0x08,0x15,0x02,0x00,0x00], [0x04,0x04,0x1F,0x04,0x04,0x00,0x1F], // }~±
];

#[cfg(test)]
mod tests {
    use super::png::tests::check_png;
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
        let s = svg(&pts, "t & <t>", Some(26.5));
        assert_eq!(s, svg(&pts, "t & <t>", Some(26.5)));
        for q in &pts[..8] {
            assert!(s.contains(&format!(">{}</text>", q.label)), "{}", q.label);
        }
        assert!(s.contains("a&lt;b&amp;c&quot;d&apos;&gt;e") && s.contains("t &amp; &lt;t&gt;"));
        assert!(s.contains("viewBox=\"0 0 1200 520\"") && s.contains("font-family=\"sans-serif\""));
        assert!(s.contains(">base</text>") && s.contains("(log scale)") && s.contains(">0.01</text>"));
        assert!(s.ends_with("</svg>\n") && !s.contains("NaN") && !s.contains("inf"));
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
        let b = png(&sample(), "sweep", Some(26.5));
        assert_eq!(b, png(&sample(), "sweep", Some(26.5)));
        let (w, h, raw) = check_png(&b);
        assert_eq!((w, h), (W, H));
        let ink = raw.chunks(w + 1).flat_map(|r| &r[1..]).filter(|&&v| v != 0).count();
        assert!(ink > 5000, "{ink}");
        assert!(raw.iter().all(|&v| (v as usize) < PALETTE.len()));
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
            (0..60)
                .map(|k| {
                    p(&format!("p{k}"), k as f64 * 0.1, 100.0 / (k as f64 + 1.0), 0.5 / (k as f64 + 1.0))
                })
                .collect(),
        ];
        for c in &cases {
            for base in [None, Some(12.0), Some(n), Some(1e300)] {
                let s = svg(c, "\u{0}<title>", base);
                assert!(!s.contains("NaN") && !s.contains('\u{0}') && !s.contains('\u{fffe}'));
                let (_, _, raw) = check_png(&png(c, "\u{b1}\u{2603}", base));
                assert!(raw.iter().any(|&v| v != 0));
            }
        }
        assert!(svg(&[], "empty", None).contains(">no data</text>"));
        assert!(svg(&[p("nan", n, n, n)], "t", None).contains("1 skipped (non-finite)"));
    }
}

//! The job file: `[defaults]`, `[[job]]` and `[[matrix]]` entries expanded into resolved jobs, the
//! quality gates they carry, and `--shard I/N`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quantkit_core::{Error, Result};
use quantkit_quant::gptq::GptqConfig;
use quantkit_quant::quantize::CalibOptions;
use serde::{Deserialize, Serialize};

use crate::jobs::{EvalSettings, RecipeSpec};

/// Quality gates; a job fails when any set gate is not met.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_kld: Option<f64>,
    /// PPL / base PPL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ppl_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ppl: Option<f64>,
    /// Fraction (0–1) of positions where the top token matches the base's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_same_top: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bits_per_weight: Option<f64>,
}

impl Gates {
    fn or(&self, d: &Gates) -> Gates {
        Gates {
            max_kld: self.max_kld.or(d.max_kld),
            max_ppl_ratio: self.max_ppl_ratio.or(d.max_ppl_ratio),
            max_ppl: self.max_ppl.or(d.max_ppl),
            min_same_top: self.min_same_top.or(d.min_same_top),
            max_bits_per_weight: self.max_bits_per_weight.or(d.max_bits_per_weight),
        }
    }

    /// The failed gates, as `metric value > limit`.
    pub(crate) fn check(&self, m: &Metrics, bpw: f64) -> Vec<String> {
        let mut f = vec![];
        let mut max = |name: &str, v: f64, lim: Option<f64>| {
            if let Some(l) = lim {
                if v.is_nan() || v > l {
                    f.push(format!("{name} {v:.6} > max_{name} {l}"));
                }
            }
        };
        max("kld", m.kld, self.max_kld);
        max("ppl_ratio", m.ppl_ratio, self.max_ppl_ratio);
        max("ppl", m.ppl, self.max_ppl);
        max("bits_per_weight", bpw, self.max_bits_per_weight);
        if let Some(l) = self.min_same_top {
            if m.same_top_p.is_nan() || m.same_top_p < l {
                f.push(format!("same_top {:.6} < min_same_top {l}", m.same_top_p));
            }
        }
        f
    }
}

/// Settings a job may take from `[defaults]` or set itself.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    text: Option<PathBuf>,
    ctx: Option<usize>,
    chunks: Option<usize>,
    calib: Option<PathBuf>,
    samples: Option<usize>,
    seqlen: Option<usize>,
    seed: Option<u64>,
    damp: Option<f64>,
    #[serde(default)]
    gates: Gates,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobEntry {
    name: String,
    model: String,
    recipe: String,
    /// Output path under the output folder (default `<name>.gguf` or `<name>/`).
    output: Option<String>,
    #[serde(flatten)]
    settings: Settings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatrixEntry {
    models: Vec<String>,
    recipes: Vec<String>,
    #[serde(flatten)]
    settings: Settings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    out: Option<PathBuf>,
    #[serde(default)]
    defaults: Settings,
    #[serde(default)]
    job: Vec<JobEntry>,
    #[serde(default)]
    matrix: Vec<MatrixEntry>,
}

/// A job with everything resolved.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) index: usize,
    pub(crate) name: String,
    /// As written in the job file (the report shows this).
    pub(crate) model_text: String,
    pub(crate) model: PathBuf,
    pub(crate) recipe: RecipeSpec,
    /// Relative to the output folder.
    pub(crate) output: String,
    pub(crate) eval: EvalSettings,
    pub(crate) calib: Option<CalibOptions>,
    pub(crate) damp: f64,
    pub(crate) gates: Gates,
}

fn merge_settings(job: &Settings, d: &Settings) -> Settings {
    Settings {
        text: job.text.clone().or_else(|| d.text.clone()),
        ctx: job.ctx.or(d.ctx),
        chunks: job.chunks.or(d.chunks),
        calib: job.calib.clone().or_else(|| d.calib.clone()),
        samples: job.samples.or(d.samples),
        seqlen: job.seqlen.or(d.seqlen),
        seed: job.seed.or(d.seed),
        damp: job.damp.or(d.damp),
        gates: job.gates.or(&d.gates),
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 120
        && !n.starts_with('.')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Read and expand a job file: `[[job]]` entries, then each `[[matrix]]` (models × recipes), in
/// file order.
pub(crate) fn load_jobs(path: &Path) -> Result<(Vec<Job>, Option<PathBuf>)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let f: JobFile = toml::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: not a valid job file: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    let mut entries: Vec<(String, String, String, Option<String>, Settings)> = vec![];
    for j in &f.job {
        entries.push((
            j.name.clone(),
            j.model.clone(),
            j.recipe.clone(),
            j.output.clone(),
            j.settings.clone(),
        ));
    }
    for m in &f.matrix {
        for model in &m.models {
            let stem = Path::new(model)
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "model".into());
            for r in &m.recipes {
                let slug = RecipeSpec::parse(r, &base)?.slug();
                entries.push((format!("{stem}-{slug}"), model.clone(), r.clone(), None, m.settings.clone()));
            }
        }
    }
    if entries.is_empty() {
        return Err(Error::Invalid(format!("{}: no [[job]] or [[matrix]] entries", path.display())));
    }
    let mut seen = BTreeMap::new();
    let mut jobs = vec![];
    for (index, (name, model, recipe, output, s)) in entries.into_iter().enumerate() {
        if !valid_name(&name) {
            return Err(Error::Invalid(format!(
                "{}: job name {name:?} (letters, digits, '-', '_', '.'; not starting with '.')",
                path.display()
            )));
        }
        let s = merge_settings(&s, &f.defaults);
        let r = RecipeSpec::parse(&recipe, &base).map_err(|e| Error::Invalid(format!("job {name}: {e}")))?;
        let output =
            output.unwrap_or_else(|| if r.is_gguf() { format!("{name}.gguf") } else { name.clone() });
        if output.is_empty()
            || Path::new(&output).is_absolute()
            || output.split('/').any(|c| c == ".." || c.is_empty() || c.starts_with('.'))
        {
            return Err(Error::Invalid(format!(
                "job {name}: output {output:?} must be a relative path inside the output folder"
            )));
        }
        for (what, key) in [("name", name.clone()), ("output", output.clone())] {
            if let Some(other) = seen.insert(format!("{what}:{key}"), name.clone()) {
                return Err(Error::Invalid(format!(
                    "{}: jobs {other} and {name} have the same {what} {key:?}",
                    path.display()
                )));
            }
        }
        let text = s
            .text
            .as_ref()
            .ok_or_else(|| Error::Invalid(format!("job {name}: no evaluation text (text = ...)")))?;
        let calib = s.calib.as_ref().map(|c| CalibOptions {
            corpus: Some(resolve(c)),
            samples: s.samples.unwrap_or(128),
            seqlen: s.seqlen.unwrap_or(512),
            seed: s.seed.unwrap_or(0),
        });
        if r.needs_calibration() && calib.is_none() {
            return Err(Error::Invalid(format!(
                "job {name}: recipe {} needs calibration text (calib = ...)",
                r.text
            )));
        }
        jobs.push(Job {
            index,
            name,
            model: resolve(Path::new(&model)),
            model_text: model,
            recipe: r,
            output,
            eval: EvalSettings { text: resolve(text), ctx: s.ctx.unwrap_or(512), chunks: s.chunks },
            calib,
            damp: s.damp.unwrap_or(GptqConfig::default().damp),
            gates: s.gates,
        });
    }
    Ok((jobs, f.out.map(|o| resolve(&o))))
}

pub(crate) fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || Error::Invalid(format!("--shard {s:?}: expected I/N with 1 ≤ I ≤ N"));
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if n == 0 || i == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Metrics {
    pub(crate) ppl: f64,
    pub(crate) ppl_err: f64,
    pub(crate) ppl_base: f64,
    pub(crate) ppl_ratio: f64,
    pub(crate) kld: f64,
    pub(crate) kld_err: f64,
    pub(crate) same_top_p: f64,
    pub(crate) tokens_scored: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_and_gates() {
        assert_eq!(parse_shard("2/3").expect("ok"), (2, 3));
        for bad in ["0/3", "4/3", "1/0", "x", "1-3"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
        let m = Metrics {
            ppl: 11.0,
            ppl_err: 0.1,
            ppl_base: 10.0,
            ppl_ratio: 1.1,
            kld: 0.06,
            kld_err: 0.0,
            same_top_p: 0.9,
            tokens_scored: 10,
        };
        let g = Gates {
            max_kld: Some(0.05),
            max_ppl_ratio: Some(1.2),
            min_same_top: Some(0.95),
            ..Default::default()
        };
        let f = g.check(&m, 4.5);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].starts_with("kld 0.060000 > max_kld 0.05"), "{f:?}");
        assert!(f[1].contains("same_top"), "{f:?}");
        let d = Gates { max_ppl: Some(12.0), max_kld: Some(1.0), ..Default::default() };
        let merged = g.or(&d);
        assert_eq!(merged.max_kld, Some(0.05));
        assert_eq!(merged.max_ppl, Some(12.0));
        assert!(merged.check(&m, 4.5).len() == 2);
    }
}

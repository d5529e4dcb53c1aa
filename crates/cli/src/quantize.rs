//! `quantkit quantize`: calibrated quantization (RTN, GPTQ, AWQ) into GGUF and integer checkpoints.

use std::path::PathBuf;

use clap::Args;
use quantkit_core::{Error, Result};
use quantkit_quant::gptq::GptqConfig;
use quantkit_quant::grid::IntSpec;
use quantkit_quant::method::smooth::SmoothConfig;
use quantkit_quant::method::{Knobs, MethodKind};
use quantkit_quant::quantize::{
    parse_bytes, quantize as run, CalibOptions, OutFormat, QuantizeOptions, RunSettings,
};
use serde_json::json;

use crate::commands::{peak_rss_mb, Ctx};
use crate::progress::StageBars;

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// HF checkpoint folder or GGUF file.
    pub model: PathBuf,
    /// Output folder: one entry per format (gptq/, gptq-v2/, awq/, compressed-tensors/, ct-w8a8/,
    /// ct-fp8/, ct-fp8-dynamic/, ct-nvfp4/, bnb-nf4/, bnb-nf4-dq/, model-<MIX>.gguf) plus report.json.
    #[arg(long, short)]
    pub output: PathBuf,
    /// rtn, gptq, awq or mse (activation-weighted MSE clipping, integer grids only).
    #[arg(long, default_value = "gptq")]
    pub method: String,
    /// gptq, gptq-v2, awq, compressed-tensors, ct-w8a8 (int8 W8A8: --bits 8 --group -1),
    /// ct-fp8, ct-fp8-dynamic (FP8 E4M3, --method rtn), ct-nvfp4 (compressed-tensors NVFP4A16:
    /// FP4 E2M1, an E4M3 scale per 16 weights and a global scale; --method rtn; --bits/--group do
    /// not apply), bnb-nf4, bnb-nf4-dq (bitsandbytes NF4:
    /// --method rtn rounds as bitsandbytes does on load; --method gptq feeds GPTQ's error onto the
    /// NF4 levels, each block's absmax taken when GPTQ reaches the block — with -dq rounded onto the
    /// 8-bit absmax grid then) or gguf:<type or mix> (repeat for several; they share the
    /// calibration samples, and the integer ones share one quantization).
    #[arg(long = "format", short = 'f', required = true)]
    pub formats: Vec<String>,
    /// Bits per weight of the integer grid (2, 3, 4, 8).
    #[arg(long, default_value_t = 4)]
    pub bits: u32,
    /// Group size along the input (-1: one group per output channel).
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    pub group: i64,
    /// Asymmetric grid (a zero point per group). Default: symmetric for rtn/gptq, asymmetric for awq.
    #[arg(long, conflicts_with = "sym")]
    pub asym: bool,
    /// Symmetric grid.
    #[arg(long)]
    pub sym: bool,
    /// GPTQ into integer formats: quantize columns by decreasing Hessian diagonal (desc_act, with
    /// g_idx). The default (as GPTQModel and llm-compressor); GGUF outputs always use column order
    /// (GGUF stores no permutation). bnb-nf4 outputs take it as is: NF4 blocks stay in place, only
    /// the order GPTQ visits the columns changes.
    #[arg(long, overrides_with = "no_act_order")]
    pub act_order: bool,
    /// GPTQ: plain column order.
    #[arg(long)]
    pub no_act_order: bool,
    /// GPTQ with act-order: group parameters fixed up front in column order (g_idx monotone).
    /// For bnb-nf4 outputs: every block's absmax fixed up front from the original weights.
    /// Chosen automatically when an awq or compressed-tensors output is requested (they store no
    /// g_idx), as llm-compressor's `actorder="static"`.
    #[arg(long)]
    pub static_groups: bool,
    /// GPTQ damping, a fraction of the mean Hessian diagonal (raised ×10 until Cholesky succeeds).
    #[arg(long, default_value_t = 0.01)]
    pub damp: f64,
    /// GPTQ lazy-batch block size.
    #[arg(long, default_value_t = 128)]
    pub block: usize,
    /// SmoothQuant before quantizing (integer outputs, e.g. ct-w8a8): per-channel migration
    /// strength α in [0, 1] (0.5 is llm-compressor's default), or `auto` to search α per site by
    /// the predicted W8A8 output error. Folded into the RMSNorms: the output is an ordinary
    /// checkpoint. Needs --calib.
    #[arg(long, value_name = "ALPHA|auto")]
    pub smoothquant: Option<String>,
    /// Calibration text: a file, a folder of text files, or `self` (sampled from the model).
    /// Never the evaluation text.
    #[arg(long)]
    pub calib: Option<String>,
    /// Calibration sequences.
    #[arg(long)]
    pub samples: Option<usize>,
    /// Tokens per calibration sequence.
    #[arg(long)]
    pub seqlen: Option<usize>,
    /// `default` (128 × 512, GPTQ's usual) or `quick` (32 × 256).
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// Seed of the calibration sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the calibration's imatrix (OUT/imatrix.gguf, llama.cpp's format).
    #[arg(long)]
    pub imatrix: bool,
    /// Memory for calibration activations (every sample's residual stream, attention context and
    /// post-attention residual of the current block); what does not fit goes to temporary files
    /// in OUT. Weights are read one block at a time whatever this is.
    #[arg(long, default_value = "4G", value_name = "SIZE")]
    pub mem_budget: String,
    /// Continue a killed run: blocks finished before the kill are taken from OUT/.quantkit-work
    /// (each pass saves every block there), the rest are computed; the output is byte-identical to
    /// an uninterrupted run. Without it, an earlier run's checkpoints are discarded.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub rotation: crate::commands::RotateArgs,
}

pub fn quantize(ctx: &Ctx, a: &QuantizeArgs) -> Result<()> {
    let method: MethodKind = a.method.parse()?;
    let formats = a.formats.iter().map(|f| OutFormat::parse(f)).collect::<Result<Vec<_>>>()?;
    let (ds, dl) = match a.preset.as_str() {
        "default" => (128, 512),
        "quick" => (32, 256),
        p => return Err(Error::Invalid(format!("unknown preset {p:?} (default, quick)"))),
    };
    let calib = a.calib.as_ref().map(|c| CalibOptions {
        corpus: if c == "self" { None } else { Some(PathBuf::from(c)) },
        samples: a.samples.unwrap_or(ds),
        seqlen: a.seqlen.unwrap_or(dl),
        seed: a.seed,
    });
    let sym = if a.asym { false } else { a.sym || method.info().default_sym };
    // Layouts without g_idx (awq, compressed-tensors) take act-order with static groups.
    let no_g_idx = formats.iter().any(|f| f.layout().is_some_and(|l| !l.stores_g_idx()));
    let opts = QuantizeOptions {
        method,
        int: Some(IntSpec::new(a.bits, a.group, sym)?),
        knobs: Knobs {
            gptq: GptqConfig {
                block: a.block,
                damp: a.damp,
                act_order: !a.no_act_order,
                static_groups: a.static_groups || (!a.no_act_order && no_g_idx),
            },
            smooth: a.smoothquant.as_deref().map(SmoothConfig::parse).transpose()?,
            ..Knobs::default()
        },
        formats,
        calib,
        write_imatrix: a.imatrix,
        run: RunSettings { mem_budget: parse_bytes(&a.mem_budget)?, resume: a.resume },
        rotate: a.rotation.spec(),
    };
    let bars = StageBars::new(ctx.progress);
    let report = run(&a.model, &a.output, &opts, &bars)?;
    bars.clear();
    if ctx.json {
        let mut j = serde_json::to_value(&report).map_err(|e| Error::Invalid(e.to_string()))?;
        j["peak_rss_mb"] = json!(peak_rss_mb());
        println!("{}", serde_json::to_string_pretty(&j).map_err(|e| Error::Invalid(e.to_string()))?);
        return Ok(());
    }
    if let Some(m) = &report.calibration {
        println!(
            "calibration: {} × {} tokens from {} (seed {}), {:.1} s",
            m.samples,
            m.seqlen,
            m.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the model itself".into()),
            m.seed,
            report.calibration_seconds
        );
    }
    for p in &report.passes {
        println!(
            "{:>14}: {} layers in {:.1} s; mean relative output error {:.3e} ({}) vs {:.3e} (RTN)",
            p.target,
            p.layers.len(),
            p.seconds,
            p.mean_rel_error,
            report.method,
            p.mean_rel_error_rtn
        );
    }
    for o in &report.outputs {
        println!("wrote {} ({}, {:.1} MB)", o.path.display(), o.format, o.bytes as f64 / 1e6);
    }
    println!(
        "done in {:.1} s, peak RSS {:.0} MB; per-layer errors in {}",
        report.seconds,
        peak_rss_mb().unwrap_or(0.0),
        report.out.join("report.json").display()
    );
    Ok(())
}

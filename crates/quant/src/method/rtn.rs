//! Round to nearest: each projection on its grid, straight from the weights (with the calibration
//! pass only for the report's output errors and the GGUF types' importance weights). Into GGUF,
//! llama.cpp's recipe: the pass collects an imatrix and the converter quantizes with it.

use quantkit_core::Result;
use quantkit_engine::{BlockWeights, Site};

use super::{GgufUse, Knobs, Method, MethodInfo, PassCtx};
use crate::writers::IntFormat;

pub const INFO: MethodInfo = MethodInfo {
    name: "rtn",
    needs_calibration: false,
    default_sym: true,
    default_layout: IntFormat::GptqV1,
    reorders_columns: false,
    gguf: GgufUse::Imatrix,
    make,
};

fn make(_: &Knobs) -> Box<dyn Method> {
    Box::new(Rtn)
}

/// The method.
#[derive(Debug)]
pub struct Rtn;

impl Method for Rtn {
    fn at_site(&mut self, cx: &mut PassCtx, layer: usize, site: Site, bw: &mut BlockWeights) -> Result<()> {
        cx.quantize_site(layer, site, bw, |_, _| Ok(None))
    }
}

//! Activation functions of the recurrent ops' `activations` attribute.

use crate::error::KernelError;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Act {
    Relu,
    Tanh,
    Sigmoid,
    Affine(f64, f64),
    LeakyRelu(f64),
    ThresholdedRelu(f64),
    ScaledTanh(f64, f64),
    HardSigmoid(f64, f64),
    Elu(f64),
    Softsign,
    Softplus,
}

impl Act {
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Act::Relu => x.max(0.0),
            Act::Tanh => x.tanh(),
            Act::Sigmoid => {
                if x >= 0.0 {
                    1.0 / (1.0 + (-x).exp())
                } else {
                    let e = x.exp();
                    e / (1.0 + e)
                }
            }
            Act::Affine(a, b) => a * x + b,
            Act::LeakyRelu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            Act::ThresholdedRelu(a) => {
                if x > a {
                    x
                } else {
                    0.0
                }
            }
            Act::ScaledTanh(a, b) => a * (b * x).tanh(),
            Act::HardSigmoid(a, b) => (a * x + b).clamp(0.0, 1.0),
            Act::Elu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * (x.exp() - 1.0)
                }
            }
            Act::Softsign => x / (1.0 + x.abs()),
            Act::Softplus => {
                // log(1 + e^x) without overflow.
                if x > 0.0 {
                    x + (-x).exp().ln_1p()
                } else {
                    x.exp().ln_1p()
                }
            }
        }
    }
}

/// Parses activation names (case-insensitive). `alpha` / `beta` values are consumed in
/// order by the functions that take them; a function whose value is not listed gets the
/// default of the matching ONNX op.
pub(super) fn parse(
    names: &[String],
    alpha: Option<&[f32]>,
    beta: Option<&[f32]>,
) -> Result<Vec<Act>, KernelError> {
    let mut alphas = alpha.unwrap_or(&[]).iter().map(|&v| v as f64);
    let mut betas = beta.unwrap_or(&[]).iter().map(|&v| v as f64);
    names
        .iter()
        .map(|n| {
            let mut a = |d: f64| alphas.next().unwrap_or(d);
            Ok(match n.to_ascii_lowercase().as_str() {
                "relu" => Act::Relu,
                "tanh" => Act::Tanh,
                "sigmoid" => Act::Sigmoid,
                "softsign" => Act::Softsign,
                "softplus" => Act::Softplus,
                "leakyrelu" => Act::LeakyRelu(a(0.01)),
                "thresholdedrelu" => Act::ThresholdedRelu(a(1.0)),
                "elu" => Act::Elu(a(1.0)),
                "affine" => {
                    let av = a(1.0);
                    Act::Affine(av, betas.next().unwrap_or(0.0))
                }
                "scaledtanh" => {
                    let av = a(1.0);
                    Act::ScaledTanh(av, betas.next().unwrap_or(1.0))
                }
                "hardsigmoid" => {
                    let av = a(0.2);
                    Act::HardSigmoid(av, betas.next().unwrap_or(0.5))
                }
                other => {
                    return Err(KernelError::Unsupported(format!(
                        "recurrent activation {other:?}"
                    )))
                }
            })
        })
        .collect()
}

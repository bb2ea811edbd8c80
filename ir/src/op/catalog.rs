//! The op catalog: every op of ONNX's default domain (attribute sets of the newest
//! version, defaults from the ONNX schemas) and the ONNX Runtime contrib ops kiln emits.

use super::*;
use crate::dtype::DType;
use crate::shape::Type;
use crate::tensor::Tensor;

ops! {
    /// `Abs`, opset 13
    Abs: "" "Abs" {},
    /// `Acos`, opset 22
    Acos: "" "Acos" {},
    /// `Acosh`, opset 22
    Acosh: "" "Acosh" {},
    /// `Add`, opset 14
    Add: "" "Add" {},
    /// `AffineGrid`, opset 20
    AffineGrid: "" "AffineGrid" {
        align_corners: bool = false,
    },
    /// `And`, opset 7
    And: "" "And" {},
    /// `ArgMax`, opset 13
    ArgMax: "" "ArgMax" {
        axis: i64 = 0,
        keepdims: bool = true,
        select_last_index: bool = false,
    },
    /// `ArgMin`, opset 13
    ArgMin: "" "ArgMin" {
        axis: i64 = 0,
        keepdims: bool = true,
        select_last_index: bool = false,
    },
    /// `Asin`, opset 22
    Asin: "" "Asin" {},
    /// `Asinh`, opset 22
    Asinh: "" "Asinh" {},
    /// `Atan`, opset 22
    Atan: "" "Atan" {},
    /// `Atanh`, opset 22
    Atanh: "" "Atanh" {},
    /// `Attention`, opset 25
    Attention: "" "Attention" {
        is_causal: bool = false,
        kv_num_heads: Option<i64>,
        left_window_size: i64 = -1,
        q_num_heads: Option<i64>,
        qk_matmul_output_mode: i64 = 0,
        right_window_size: i64 = -1,
        scale: Option<f32>,
        softcap: f32 = 0.0,
        softmax_precision: Option<i64>,
    },
    /// `AveragePool`, opset 22
    AveragePool: "" "AveragePool" {
        auto_pad: String = "NOTSET".into(),
        ceil_mode: bool = false,
        count_include_pad: bool = false,
        dilations: Option<Vec<i64>>,
        kernel_shape: Vec<i64>,
        pads: Option<Vec<i64>>,
        strides: Option<Vec<i64>>,
    },
    /// `BatchNormalization`, opset 15
    BatchNormalization: "" "BatchNormalization" {
        epsilon: f32 = 9.999999747378752e-06,
        momentum: f32 = 0.8999999761581421,
        training_mode: bool = false,
    },
    /// `Bernoulli`, opset 22
    Bernoulli: "" "Bernoulli" {
        dtype: Option<i64>,
        seed: Option<f32>,
    },
    /// `BitCast`, opset 26
    BitCast: "" "BitCast" {
        to: DType,
    },
    /// `BitShift`, opset 28
    BitShift: "" "BitShift" {
        direction: String,
    },
    /// `BitwiseAnd`, opset 18
    BitwiseAnd: "" "BitwiseAnd" {},
    /// `BitwiseNot`, opset 18
    BitwiseNot: "" "BitwiseNot" {},
    /// `BitwiseOr`, opset 18
    BitwiseOr: "" "BitwiseOr" {},
    /// `BitwiseXor`, opset 18
    BitwiseXor: "" "BitwiseXor" {},
    /// `BlackmanWindow`, opset 17
    BlackmanWindow: "" "BlackmanWindow" {
        output_datatype: i64 = 1,
        periodic: bool = true,
    },
    /// `Cast`, opset 28
    Cast: "" "Cast" {
        round_mode: String = "up".into(),
        saturate: bool = true,
        to: DType,
    },
    /// `CastLike`, opset 25
    CastLike: "" "CastLike" {
        round_mode: String = "up".into(),
        saturate: bool = true,
    },
    /// `CausalConvWithState`, opset 27
    CausalConvWithState: "" "CausalConvWithState" {
        activation: String = "none".into(),
    },
    /// `Ceil`, opset 13
    Ceil: "" "Ceil" {},
    /// `Celu`, opset 28
    Celu: "" "Celu" {
        alpha: f32 = 1.0,
    },
    /// `CenterCropPad`, opset 18
    CenterCropPad: "" "CenterCropPad" {
        axes: Option<Vec<i64>>,
    },
    /// `Clip`, opset 13
    Clip: "" "Clip" {},
    /// `Col2Im`, opset 18
    Col2Im: "" "Col2Im" {
        dilations: Option<Vec<i64>>,
        pads: Option<Vec<i64>>,
        strides: Option<Vec<i64>>,
    },
    /// `Compress`, opset 28
    Compress: "" "Compress" {
        axis: Option<i64>,
    },
    /// `Concat`, opset 13
    Concat: "" "Concat" {
        axis: i64,
    },
    /// `ConcatFromSequence`, opset 11
    ConcatFromSequence: "" "ConcatFromSequence" {
        axis: i64,
        new_axis: bool = false,
    },
    /// `Constant`, opset 25
    Constant: "" "Constant" {
        sparse_value: Option<Tensor>,
        value: Option<Tensor>,
        value_float: Option<f32>,
        value_floats: Option<Vec<f32>>,
        value_int: Option<i64>,
        value_ints: Option<Vec<i64>>,
        value_string: Option<String>,
        value_strings: Option<Vec<String>>,
    },
    /// `ConstantOfShape`, opset 25
    ConstantOfShape: "" "ConstantOfShape" {
        value: Option<Tensor>,
    },
    /// `Conv`, opset 22
    Conv: "" "Conv" {
        auto_pad: String = "NOTSET".into(),
        dilations: Option<Vec<i64>>,
        group: i64 = 1,
        kernel_shape: Option<Vec<i64>>,
        pads: Option<Vec<i64>>,
        strides: Option<Vec<i64>>,
    },
    /// `ConvInteger`, opset 10
    ConvInteger: "" "ConvInteger" {
        auto_pad: String = "NOTSET".into(),
        dilations: Option<Vec<i64>>,
        group: i64 = 1,
        kernel_shape: Option<Vec<i64>>,
        pads: Option<Vec<i64>>,
        strides: Option<Vec<i64>>,
    },
    /// `ConvTranspose`, opset 22
    ConvTranspose: "" "ConvTranspose" {
        auto_pad: String = "NOTSET".into(),
        dilations: Option<Vec<i64>>,
        group: i64 = 1,
        kernel_shape: Option<Vec<i64>>,
        output_padding: Option<Vec<i64>>,
        output_shape: Option<Vec<i64>>,
        pads: Option<Vec<i64>>,
        strides: Option<Vec<i64>>,
    },
    /// `Cos`, opset 22
    Cos: "" "Cos" {},
    /// `Cosh`, opset 22
    Cosh: "" "Cosh" {},
    /// `CumProd`, opset 26
    CumProd: "" "CumProd" {
        exclusive: bool = false,
        reverse: bool = false,
    },
    /// `CumSum`, opset 14
    CumSum: "" "CumSum" {
        exclusive: bool = false,
        reverse: bool = false,
    },
    /// `DFT`, opset 20
    DFT: "" "DFT" {
        inverse: bool = false,
        onesided: bool = false,
    },
    /// `DeformConv`, opset 22
    DeformConv: "" "DeformConv" {
        dilations: Option<Vec<i64>>,
        group: i64 = 1,
        kernel_shape: Option<Vec<i64>>,
        offset_group: i64 = 1,
        pads: Option<Vec<i64>>,
        strides: Option<Vec<i64>>,
    },
    /// `DepthToSpace`, opset 28
    DepthToSpace: "" "DepthToSpace" {
        blocksize: i64,
        mode: String = "DCR".into(),
    },
    /// `DequantizeLinear`, opset 28
    DequantizeLinear: "" "DequantizeLinear" {
        axis: i64 = 1,
        block_size: i64 = 0,
        output_dtype: i64 = 0,
    },
    /// `Det`, opset 22
    Det: "" "Det" {},
    /// `Div`, opset 14
    Div: "" "Div" {},
    /// `Dropout`, opset 22
    Dropout: "" "Dropout" {
        seed: Option<i64>,
    },
    /// `DynamicQuantizeLinear`, opset 11
    DynamicQuantizeLinear: "" "DynamicQuantizeLinear" {},
    /// `Einsum`, opset 28
    Einsum: "" "Einsum" {
        equation: String,
    },
    /// `Elu`, opset 22
    Elu: "" "Elu" {
        alpha: f32 = 1.0,
    },
    /// `Equal`, opset 19
    Equal: "" "Equal" {},
    /// `Erf`, opset 13
    Erf: "" "Erf" {},
    /// `Exp`, opset 13
    Exp: "" "Exp" {},
    /// `Expand`, opset 13
    Expand: "" "Expand" {},
    /// `EyeLike`, opset 22
    EyeLike: "" "EyeLike" {
        dtype: Option<i64>,
        k: i64 = 0,
    },
    /// `Flatten`, opset 25
    Flatten: "" "Flatten" {
        axis: i64 = 1,
    },
    /// `Floor`, opset 13
    Floor: "" "Floor" {},
    /// `GRU`, opset 22
    GRU: "" "GRU" {
        activation_alpha: Option<Vec<f32>>,
        activation_beta: Option<Vec<f32>>,
        activations: Option<Vec<String>>,
        clip: Option<f32>,
        direction: String = "forward".into(),
        hidden_size: Option<i64>,
        layout: i64 = 0,
        linear_before_reset: bool = false,
    },
    /// `Gather`, opset 13
    Gather: "" "Gather" {
        axis: i64 = 0,
    },
    /// `GatherElements`, opset 13
    GatherElements: "" "GatherElements" {
        axis: i64 = 0,
    },
    /// `GatherND`, opset 13
    GatherND: "" "GatherND" {
        batch_dims: i64 = 0,
    },
    /// `Gelu`, opset 20
    Gelu: "" "Gelu" {
        approximate: String = "none".into(),
    },
    /// `Gemm`, opset 13
    Gemm: "" "Gemm" {
        alpha: f32 = 1.0,
        beta: f32 = 1.0,
        trans_a @ "transA": bool = false,
        trans_b @ "transB": bool = false,
    },
    /// `GlobalAveragePool`, opset 22
    GlobalAveragePool: "" "GlobalAveragePool" {},
    /// `GlobalLpPool`, opset 22
    GlobalLpPool: "" "GlobalLpPool" {
        p: i64 = 2,
    },
    /// `GlobalMaxPool`, opset 22
    GlobalMaxPool: "" "GlobalMaxPool" {},
    /// `Greater`, opset 13
    Greater: "" "Greater" {},
    /// `GreaterOrEqual`, opset 16
    GreaterOrEqual: "" "GreaterOrEqual" {},
    /// `GridSample`, opset 22
    GridSample: "" "GridSample" {
        align_corners: bool = false,
        mode: String = "linear".into(),
        padding_mode: String = "zeros".into(),
    },
    /// `GroupNormalization`, opset 21
    GroupNormalization: "" "GroupNormalization" {
        epsilon: f32 = 9.999999747378752e-06,
        num_groups: i64,
        stash_type: i64 = 1,
    },
    /// `HammingWindow`, opset 17
    HammingWindow: "" "HammingWindow" {
        output_datatype: i64 = 1,
        periodic: bool = true,
    },
    /// `HannWindow`, opset 17
    HannWindow: "" "HannWindow" {
        output_datatype: i64 = 1,
        periodic: bool = true,
    },
    /// `HardSigmoid`, opset 22
    HardSigmoid: "" "HardSigmoid" {
        alpha: f32 = 0.20000000298023224,
        beta: f32 = 0.5,
    },
    /// `HardSwish`, opset 22
    HardSwish: "" "HardSwish" {},
    /// `Hardmax`, opset 13
    Hardmax: "" "Hardmax" {
        axis: i64 = -1,
    },
    /// `Identity`, opset 25
    Identity: "" "Identity" {},
    /// `If`, opset 25
    If: "" "If" {
        else_branch: Graph,
        then_branch: Graph,
    },
    /// `ImageDecoder`, opset 20
    ImageDecoder: "" "ImageDecoder" {
        pixel_format: String = "RGB".into(),
    },
    /// `InstanceNormalization`, opset 22
    InstanceNormalization: "" "InstanceNormalization" {
        epsilon: f32 = 9.999999747378752e-06,
    },
    /// `IsInf`, opset 20
    IsInf: "" "IsInf" {
        detect_negative: bool = true,
        detect_positive: bool = true,
    },
    /// `IsNaN`, opset 20
    IsNaN: "" "IsNaN" {},
    /// `LRN`, opset 13
    LRN: "" "LRN" {
        alpha: f32 = 9.999999747378752e-05,
        beta: f32 = 0.75,
        bias: f32 = 1.0,
        size: i64,
    },
    /// `LSTM`, opset 22
    LSTM: "" "LSTM" {
        activation_alpha: Option<Vec<f32>>,
        activation_beta: Option<Vec<f32>>,
        activations: Option<Vec<String>>,
        clip: Option<f32>,
        direction: String = "forward".into(),
        hidden_size: Option<i64>,
        input_forget: bool = false,
        layout: i64 = 0,
    },
    /// `LayerNormalization`, opset 17
    LayerNormalization: "" "LayerNormalization" {
        axis: i64 = -1,
        epsilon: f32 = 9.999999747378752e-06,
        stash_type: i64 = 1,
    },
    /// `LeakyRelu`, opset 16
    LeakyRelu: "" "LeakyRelu" {
        alpha: f32 = 0.009999999776482582,
    },
    /// `Less`, opset 13
    Less: "" "Less" {},
    /// `LessOrEqual`, opset 16
    LessOrEqual: "" "LessOrEqual" {},
    /// `LinearAttention`, opset 27
    LinearAttention: "" "LinearAttention" {
        chunk_size: i64 = 64,
        kv_num_heads: i64,
        q_num_heads: i64,
        scale: f32 = 0.0,
        update_rule: String = "gated_delta".into(),
    },
    /// `Log`, opset 13
    Log: "" "Log" {},
    /// `LogSoftmax`, opset 13
    LogSoftmax: "" "LogSoftmax" {
        axis: i64 = -1,
    },
    /// `Loop`, opset 25
    Loop: "" "Loop" {
        body: Graph,
    },
    /// `LpNormalization`, opset 22
    LpNormalization: "" "LpNormalization" {
        axis: i64 = -1,
        p: i64 = 2,
    },
    /// `LpPool`, opset 22
    LpPool: "" "LpPool" {
        auto_pad: String = "NOTSET".into(),
        ceil_mode: bool = false,
        dilations: Option<Vec<i64>>,
        kernel_shape: Vec<i64>,
        p: i64 = 2,
        pads: Option<Vec<i64>>,
        strides: Option<Vec<i64>>,
    },
    /// `MatMul`, opset 13
    MatMul: "" "MatMul" {},
    /// `MatMulInteger`, opset 10
    MatMulInteger: "" "MatMulInteger" {},
    /// `Max`, opset 13
    Max: "" "Max" {},
    /// `MaxPool`, opset 22
    MaxPool: "" "MaxPool" {
        auto_pad: String = "NOTSET".into(),
        ceil_mode: bool = false,
        dilations: Option<Vec<i64>>,
        kernel_shape: Vec<i64>,
        pads: Option<Vec<i64>>,
        storage_order: i64 = 0,
        strides: Option<Vec<i64>>,
    },
    /// `MaxRoiPool`, opset 22
    MaxRoiPool: "" "MaxRoiPool" {
        pooled_shape: Vec<i64>,
        spatial_scale: f32 = 1.0,
    },
    /// `MaxUnpool`, opset 22
    MaxUnpool: "" "MaxUnpool" {
        kernel_shape: Vec<i64>,
        pads: Option<Vec<i64>>,
        strides: Option<Vec<i64>>,
    },
    /// `Mean`, opset 13
    Mean: "" "Mean" {},
    /// `MeanVarianceNormalization`, opset 13
    MeanVarianceNormalization: "" "MeanVarianceNormalization" {
        axes: Vec<i64> = vec![0, 2, 3],
    },
    /// `MelWeightMatrix`, opset 17
    MelWeightMatrix: "" "MelWeightMatrix" {
        output_datatype: i64 = 1,
    },
    /// `Min`, opset 13
    Min: "" "Min" {},
    /// `Mish`, opset 22
    Mish: "" "Mish" {},
    /// `Mod`, opset 28
    Mod: "" "Mod" {
        fmod: i64 = 0,
    },
    /// `Mul`, opset 14
    Mul: "" "Mul" {},
    /// `Multinomial`, opset 22
    Multinomial: "" "Multinomial" {
        dtype: i64 = 6,
        sample_size: i64 = 1,
        seed: Option<f32>,
    },
    /// `Neg`, opset 13
    Neg: "" "Neg" {},
    /// `NegativeLogLikelihoodLoss`, opset 22
    NegativeLogLikelihoodLoss: "" "NegativeLogLikelihoodLoss" {
        ignore_index: Option<i64>,
        reduction: String = "mean".into(),
    },
    /// `NonMaxSuppression`, opset 11
    NonMaxSuppression: "" "NonMaxSuppression" {
        center_point_box: bool = false,
    },
    /// `NonZero`, opset 13
    NonZero: "" "NonZero" {},
    /// `Not`, opset 1
    Not: "" "Not" {},
    /// `OneHot`, opset 28
    OneHot: "" "OneHot" {
        axis: i64 = -1,
    },
    /// `Optional`, opset 28
    Optional: "" "Optional" {
        type_ @ "type": Option<Type>,
    },
    /// `OptionalGetElement`, opset 28
    OptionalGetElement: "" "OptionalGetElement" {},
    /// `OptionalHasElement`, opset 28
    OptionalHasElement: "" "OptionalHasElement" {},
    /// `Or`, opset 7
    Or: "" "Or" {},
    /// `PRelu`, opset 16
    PRelu: "" "PRelu" {},
    /// `Pad`, opset 25
    Pad: "" "Pad" {
        mode: String = "constant".into(),
    },
    /// `Pow`, opset 15
    Pow: "" "Pow" {},
    /// `QLinearConv`, opset 10
    QLinearConv: "" "QLinearConv" {
        auto_pad: String = "NOTSET".into(),
        dilations: Option<Vec<i64>>,
        group: i64 = 1,
        kernel_shape: Option<Vec<i64>>,
        pads: Option<Vec<i64>>,
        strides: Option<Vec<i64>>,
    },
    /// `QLinearMatMul`, opset 21
    QLinearMatMul: "" "QLinearMatMul" {},
    /// `QuantizeLinear`, opset 28
    QuantizeLinear: "" "QuantizeLinear" {
        axis: i64 = 1,
        block_size: i64 = 0,
        output_dtype: i64 = 0,
        precision: i64 = 0,
        saturate: bool = true,
    },
    /// `RMSNormalization`, opset 23
    RMSNormalization: "" "RMSNormalization" {
        axis: i64 = -1,
        epsilon: f32 = 9.999999747378752e-06,
        stash_type: i64 = 1,
    },
    /// `RNN`, opset 22
    RNN: "" "RNN" {
        activation_alpha: Option<Vec<f32>>,
        activation_beta: Option<Vec<f32>>,
        activations: Vec<String> = vec!["Tanh".into(), "Tanh".into()],
        clip: Option<f32>,
        direction: String = "forward".into(),
        hidden_size: Option<i64>,
        layout: i64 = 0,
    },
    /// `RandomNormal`, opset 22
    RandomNormal: "" "RandomNormal" {
        dtype: i64 = 1,
        mean: f32 = 0.0,
        scale: f32 = 1.0,
        seed: Option<f32>,
        shape: Vec<i64>,
    },
    /// `RandomNormalLike`, opset 22
    RandomNormalLike: "" "RandomNormalLike" {
        dtype: Option<i64>,
        mean: f32 = 0.0,
        scale: f32 = 1.0,
        seed: Option<f32>,
    },
    /// `RandomUniform`, opset 22
    RandomUniform: "" "RandomUniform" {
        dtype: i64 = 1,
        high: f32 = 1.0,
        low: f32 = 0.0,
        seed: Option<f32>,
        shape: Vec<i64>,
    },
    /// `RandomUniformLike`, opset 22
    RandomUniformLike: "" "RandomUniformLike" {
        dtype: Option<i64>,
        high: f32 = 1.0,
        low: f32 = 0.0,
        seed: Option<f32>,
    },
    /// `Range`, opset 27
    Range: "" "Range" {
        stash_type: i64 = 1,
    },
    /// `Reciprocal`, opset 13
    Reciprocal: "" "Reciprocal" {},
    /// `ReduceL1`, opset 18
    ReduceL1: "" "ReduceL1" {
        keepdims: bool = true,
        noop_with_empty_axes: bool = false,
    },
    /// `ReduceL2`, opset 18
    ReduceL2: "" "ReduceL2" {
        keepdims: bool = true,
        noop_with_empty_axes: bool = false,
    },
    /// `ReduceLogSum`, opset 28
    ReduceLogSum: "" "ReduceLogSum" {
        keepdims: bool = true,
        noop_with_empty_axes: bool = false,
    },
    /// `ReduceLogSumExp`, opset 28
    ReduceLogSumExp: "" "ReduceLogSumExp" {
        keepdims: bool = true,
        noop_with_empty_axes: bool = false,
    },
    /// `ReduceMax`, opset 20
    ReduceMax: "" "ReduceMax" {
        keepdims: bool = true,
        noop_with_empty_axes: bool = false,
    },
    /// `ReduceMean`, opset 18
    ReduceMean: "" "ReduceMean" {
        keepdims: bool = true,
        noop_with_empty_axes: bool = false,
    },
    /// `ReduceMin`, opset 20
    ReduceMin: "" "ReduceMin" {
        keepdims: bool = true,
        noop_with_empty_axes: bool = false,
    },
    /// `ReduceProd`, opset 18
    ReduceProd: "" "ReduceProd" {
        keepdims: bool = true,
        noop_with_empty_axes: bool = false,
    },
    /// `ReduceSum`, opset 13
    ReduceSum: "" "ReduceSum" {
        keepdims: bool = true,
        noop_with_empty_axes: bool = false,
    },
    /// `ReduceSumSquare`, opset 18
    ReduceSumSquare: "" "ReduceSumSquare" {
        keepdims: bool = true,
        noop_with_empty_axes: bool = false,
    },
    /// `RegexFullMatch`, opset 20
    RegexFullMatch: "" "RegexFullMatch" {
        pattern: Option<String>,
    },
    /// `Relu`, opset 14
    Relu: "" "Relu" {},
    /// `Reshape`, opset 25
    Reshape: "" "Reshape" {
        allowzero: bool = false,
    },
    /// `Resize`, opset 19
    Resize: "" "Resize" {
        antialias: bool = false,
        axes: Option<Vec<i64>>,
        coordinate_transformation_mode: String = "half_pixel".into(),
        cubic_coeff_a: f32 = -0.75,
        exclude_outside: bool = false,
        extrapolation_value: f32 = 0.0,
        keep_aspect_ratio_policy: String = "stretch".into(),
        mode: String = "nearest".into(),
        nearest_mode: String = "round_prefer_floor".into(),
    },
    /// `ReverseSequence`, opset 28
    ReverseSequence: "" "ReverseSequence" {
        batch_axis: i64 = 1,
        time_axis: i64 = 0,
    },
    /// `RoiAlign`, opset 22
    RoiAlign: "" "RoiAlign" {
        coordinate_transformation_mode: String = "half_pixel".into(),
        mode: String = "avg".into(),
        output_height: i64 = 1,
        output_width: i64 = 1,
        sampling_ratio: i64 = 0,
        spatial_scale: f32 = 1.0,
    },
    /// `RotaryEmbedding`, opset 23
    RotaryEmbedding: "" "RotaryEmbedding" {
        interleaved: bool = false,
        num_heads: Option<i64>,
        rotary_embedding_dim: i64 = 0,
    },
    /// `Round`, opset 22
    Round: "" "Round" {},
    /// `STFT`, opset 17
    STFT: "" "STFT" {
        onesided: bool = true,
    },
    /// `Scan`, opset 25
    Scan: "" "Scan" {
        body: Graph,
        num_scan_inputs: i64,
        scan_input_axes: Option<Vec<i64>>,
        scan_input_directions: Option<Vec<i64>>,
        scan_output_axes: Option<Vec<i64>>,
        scan_output_directions: Option<Vec<i64>>,
    },
    /// `Scatter`, opset 11 (deprecated)
    Scatter: "" "Scatter" {
        axis: i64 = 0,
    },
    /// `ScatterElements`, opset 18
    ScatterElements: "" "ScatterElements" {
        axis: i64 = 0,
        reduction: String = "none".into(),
    },
    /// `ScatterND`, opset 18
    ScatterND: "" "ScatterND" {
        reduction: String = "none".into(),
    },
    /// `Selu`, opset 22
    Selu: "" "Selu" {
        alpha: f32 = 1.6732631921768188,
        gamma: f32 = 1.0507010221481323,
    },
    /// `SequenceAt`, opset 11
    SequenceAt: "" "SequenceAt" {},
    /// `SequenceConstruct`, opset 11
    SequenceConstruct: "" "SequenceConstruct" {},
    /// `SequenceEmpty`, opset 11
    SequenceEmpty: "" "SequenceEmpty" {
        dtype: Option<i64>,
    },
    /// `SequenceErase`, opset 11
    SequenceErase: "" "SequenceErase" {},
    /// `SequenceInsert`, opset 11
    SequenceInsert: "" "SequenceInsert" {},
    /// `SequenceLength`, opset 11
    SequenceLength: "" "SequenceLength" {},
    /// `SequenceMap`, opset 17
    SequenceMap: "" "SequenceMap" {
        body: Graph,
    },
    /// `Shape`, opset 25
    Shape: "" "Shape" {
        end: Option<i64>,
        start: i64 = 0,
    },
    /// `Shrink`, opset 9
    Shrink: "" "Shrink" {
        bias: f32 = 0.0,
        lambd: f32 = 0.5,
    },
    /// `Sigmoid`, opset 13
    Sigmoid: "" "Sigmoid" {},
    /// `Sign`, opset 13
    Sign: "" "Sign" {},
    /// `Sin`, opset 22
    Sin: "" "Sin" {},
    /// `Sinh`, opset 22
    Sinh: "" "Sinh" {},
    /// `Size`, opset 25
    Size: "" "Size" {},
    /// `Slice`, opset 13
    Slice: "" "Slice" {},
    /// `Softmax`, opset 13
    Softmax: "" "Softmax" {
        axis: i64 = -1,
    },
    /// `SoftmaxCrossEntropyLoss`, opset 13
    SoftmaxCrossEntropyLoss: "" "SoftmaxCrossEntropyLoss" {
        ignore_index: Option<i64>,
        reduction: String = "mean".into(),
    },
    /// `Softplus`, opset 22
    Softplus: "" "Softplus" {},
    /// `Softsign`, opset 22
    Softsign: "" "Softsign" {},
    /// `SpaceToDepth`, opset 28
    SpaceToDepth: "" "SpaceToDepth" {
        blocksize: i64,
        mode: String = "DCR".into(),
    },
    /// `Split`, opset 18
    Split: "" "Split" {
        axis: i64 = 0,
        num_outputs: Option<i64>,
    },
    /// `SplitToSequence`, opset 24
    SplitToSequence: "" "SplitToSequence" {
        axis: i64 = 0,
        keepdims: bool = true,
    },
    /// `Sqrt`, opset 13
    Sqrt: "" "Sqrt" {},
    /// `Squeeze`, opset 25
    Squeeze: "" "Squeeze" {},
    /// `StringConcat`, opset 20
    StringConcat: "" "StringConcat" {},
    /// `StringNormalizer`, opset 10
    StringNormalizer: "" "StringNormalizer" {
        case_change_action: String = "NONE".into(),
        is_case_sensitive: bool = false,
        locale: Option<String>,
        stopwords: Option<Vec<String>>,
    },
    /// `StringSplit`, opset 20
    StringSplit: "" "StringSplit" {
        delimiter: Option<String>,
        maxsplit: Option<i64>,
    },
    /// `Sub`, opset 14
    Sub: "" "Sub" {},
    /// `Sum`, opset 13
    Sum: "" "Sum" {},
    /// `SwiGLU`, opset 28
    SwiGLU: "" "SwiGLU" {
        alpha: f32 = 1.0,
    },
    /// `Swish`, opset 24
    Swish: "" "Swish" {
        alpha: f32 = 1.0,
    },
    /// `Tan`, opset 22
    Tan: "" "Tan" {},
    /// `Tanh`, opset 13
    Tanh: "" "Tanh" {},
    /// `TensorScatter`, opset 24
    TensorScatter: "" "TensorScatter" {
        axis: i64 = -2,
        mode: String = "linear".into(),
    },
    /// `TfIdfVectorizer`, opset 9
    TfIdfVectorizer: "" "TfIdfVectorizer" {
        max_gram_length: i64,
        max_skip_count: i64,
        min_gram_length: i64,
        mode: String,
        ngram_counts: Vec<i64>,
        ngram_indexes: Vec<i64>,
        pool_int64s: Option<Vec<i64>>,
        pool_strings: Option<Vec<String>>,
        weights: Option<Vec<f32>>,
    },
    /// `ThresholdedRelu`, opset 22
    ThresholdedRelu: "" "ThresholdedRelu" {
        alpha: f32 = 1.0,
    },
    /// `Tile`, opset 13
    Tile: "" "Tile" {},
    /// `TopK`, opset 24
    TopK: "" "TopK" {
        axis: i64 = -1,
        largest: bool = true,
        sorted: bool = true,
    },
    /// `Transpose`, opset 25
    Transpose: "" "Transpose" {
        perm: Option<Vec<i64>>,
    },
    /// `Trilu`, opset 14
    Trilu: "" "Trilu" {
        upper: bool = true,
    },
    /// `Unique`, opset 28
    Unique: "" "Unique" {
        axis: Option<i64>,
        sorted: bool = true,
    },
    /// `Unsqueeze`, opset 25
    Unsqueeze: "" "Unsqueeze" {},
    /// `Upsample`, opset 10 (deprecated)
    Upsample: "" "Upsample" {
        mode: String = "nearest".into(),
    },
    /// `Where`, opset 16
    Where: "" "Where" {},
    /// `Xor`, opset 7
    Xor: "" "Xor" {},

    // ONNX Runtime contrib ops (domain com.microsoft) that kiln's fusions emit.
    /// `com.microsoft.Gelu`: exact (erf) Gelu.
    MsGelu: "com.microsoft" "Gelu" {},
    /// `com.microsoft.FastGelu`: tanh-approximated Gelu of `X (+ bias)`.
    FastGelu: "com.microsoft" "FastGelu" {},
    /// `com.microsoft.BiasGelu`: exact Gelu of `A + B`.
    BiasGelu: "com.microsoft" "BiasGelu" {},
    /// `com.microsoft.QuickGelu`: `x * sigmoid(alpha * x)`.
    QuickGelu: "com.microsoft" "QuickGelu" {
        alpha: f32 = 1.702,
    },
    /// `com.microsoft.SkipLayerNormalization`: LayerNorm(input + skip (+ bias)).
    SkipLayerNormalization: "com.microsoft" "SkipLayerNormalization" {
        epsilon: Option<f32>,
    },
    /// `com.microsoft.SkipSimplifiedLayerNormalization`: RMSNorm(input + skip (+ bias)).
    SkipSimplifiedLayerNormalization: "com.microsoft" "SkipSimplifiedLayerNormalization" {
        epsilon: Option<f32>,
    },
    /// `com.microsoft.EmbedLayerNormalization`: word + position + segment embeddings, LayerNorm, mask index.
    EmbedLayerNormalization: "com.microsoft" "EmbedLayerNormalization" {
        epsilon: Option<f32>,
        mask_index_type: Option<i64>,
    },
    /// `com.microsoft.Attention`: packed QKV projection + multi-head self-attention.
    MsAttention: "com.microsoft" "Attention" {
        num_heads: i64,
        unidirectional: bool = false,
        qkv_hidden_sizes: Option<Vec<i64>>,
        mask_filter_value: Option<f32>,
        scale: Option<f32>,
        past_present_share_buffer: bool = false,
        do_rotary: bool = false,
        rotary_embedding_dim: Option<i64>,
    },
    /// `com.microsoft.MultiHeadAttention`: attention over already-projected Q, K, V.
    MultiHeadAttention: "com.microsoft" "MultiHeadAttention" {
        num_heads: i64,
        unidirectional: bool = false,
        mask_filter_value: Option<f32>,
        scale: Option<f32>,
    },
    /// `com.microsoft.FusedMatMul`: `alpha * op(A) @ op(B)` with transposes.
    FusedMatMul: "com.microsoft" "FusedMatMul" {
        alpha: f32 = 1.0,
        trans_a @ "transA": bool = false,
        trans_b @ "transB": bool = false,
        trans_batch_a @ "transBatchA": bool = false,
        trans_batch_b @ "transBatchB": bool = false,
    },
    /// `com.microsoft.FusedGemm`: `activation(alpha·op(A)·op(B) + beta·C)`. `activation` is
    /// one of `Relu`, `LeakyRelu` (slope `activation_alpha`, default 0.01), `Sigmoid`, `Tanh`,
    /// or absent; ONNX Runtime passes the `activation_*` attributes to the activation.
    FusedGemm: "com.microsoft" "FusedGemm" {
        alpha: f32 = 1.0,
        beta: f32 = 1.0,
        trans_a @ "transA": bool = false,
        trans_b @ "transB": bool = false,
        activation: Option<String>,
        activation_alpha: Option<f32>,
    },
    /// `com.microsoft.FusedConv`: `activation(Conv(X, W, B) + Z)` (`B`, `Z` optional; `Z`
    /// shaped like the output). `activation` is one of `Relu`, `LeakyRelu` (`activation_params`
    /// = `[alpha]`), `Clip` (`[min, max]`), `Sigmoid`, `Tanh`, or absent.
    FusedConv: "com.microsoft" "FusedConv" {
        auto_pad: String = "NOTSET".into(),
        dilations: Option<Vec<i64>>,
        group: i64 = 1,
        kernel_shape: Option<Vec<i64>>,
        pads: Option<Vec<i64>>,
        strides: Option<Vec<i64>>,
        activation: Option<String>,
        activation_params: Option<Vec<f32>>,
    },
    /// `com.microsoft.BiasAdd`: `X + bias + skip`.
    BiasAdd: "com.microsoft" "BiasAdd" {},
    /// `com.microsoft.DynamicQuantizeMatMul`: f32 A quantized to u8 at run time, times s8/u8 B.
    DynamicQuantizeMatMul: "com.microsoft" "DynamicQuantizeMatMul" {},
    /// `com.microsoft.MatMulIntegerToFloat`: integer matmul with the result dequantized.
    MatMulIntegerToFloat: "com.microsoft" "MatMulIntegerToFloat" {},
    /// `com.microsoft.SimplifiedLayerNormalization`: RMSNorm.
    SimplifiedLayerNormalization: "" "SimplifiedLayerNormalization" {
        axis: i64 = -1,
        epsilon: f32 = 1e-5,
        stash_type: i64 = 1,
    },
}

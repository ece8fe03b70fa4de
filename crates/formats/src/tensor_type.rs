/// Element encodings of tensors, with ggml's numbering (the one GGUF stores).
///
/// Quantized types pack `block_size()` weights into `block_bytes()` bytes.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    Q2_K,
    Q3_K,
    IQ4_NL,
    IQ4_XS,
    MXFP4,
}

/// Super-block size of the K-quants.
pub const QK_K: usize = 256;

impl TensorType {
    /// Map ggml's type id; `Err` carries a printable name for unsupported ids.
    pub fn from_ggml_id(id: u32) -> Result<Self, String> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            15 => Self::Q8_K,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            20 => Self::IQ4_NL,
            23 => Self::IQ4_XS,
            30 => Self::BF16,
            39 => Self::MXFP4,
            other => return Err(ggml_type_name(other)),
        })
    }

    pub fn ggml_id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::Q8_K => 15,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::IQ4_NL => 20,
            Self::IQ4_XS => 23,
            Self::BF16 => 30,
            Self::MXFP4 => 39,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q8_1 => "Q8_1",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
            Self::Q8_K => "Q8_K",
            Self::Q2_K => "Q2_K",
            Self::Q3_K => "Q3_K",
            Self::IQ4_NL => "IQ4_NL",
            Self::IQ4_XS => "IQ4_XS",
            Self::MXFP4 => "MXFP4",
        }
    }

    /// Weights per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0
            | Self::Q4_1
            | Self::Q5_0
            | Self::Q5_1
            | Self::Q8_0
            | Self::Q8_1
            | Self::IQ4_NL
            | Self::MXFP4 => 32,
            Self::Q4_K
            | Self::Q5_K
            | Self::Q6_K
            | Self::Q8_K
            | Self::Q2_K
            | Self::Q3_K
            | Self::IQ4_XS => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 2 + 16,
            Self::Q4_1 => 2 + 2 + 16,
            Self::Q5_0 => 2 + 4 + 16,
            Self::Q5_1 => 2 + 2 + 4 + 16,
            Self::Q8_0 => 2 + 32,
            Self::Q8_1 => 4 + 32,
            Self::Q4_K => 2 + 2 + 12 + 128,
            Self::Q5_K => 2 + 2 + 12 + 32 + 128,
            Self::Q6_K => 128 + 64 + 16 + 2,
            Self::Q8_K => 4 + 256 + 2 * 16,
            // scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16
            Self::Q2_K => 16 + 64 + 2 + 2,
            // hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16
            Self::Q3_K => 32 + 64 + 12 + 2,
            // d: f16, qs: [u8; 16]
            Self::IQ4_NL => 2 + 16,
            // d: f16, scales_h: u16, scales_l: [u8; 4], qs: [u8; 128]
            Self::IQ4_XS => 2 + 2 + 4 + 128,
            // e: u8 (E8M0), qs: [u8; 16]
            Self::MXFP4 => 1 + 16,
        }
    }

    /// Bytes of a row of `n` elements; `None` if `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.block_bytes())
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }

    /// Average storage bits per weight.
    pub fn bits_per_weight(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_size() as f64
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn ggml_type_name(id: u32) -> String {
    let known = [
        (4, "Q4_2 (removed)"),
        (5, "Q4_3 (removed)"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (40, "NVFP4"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == id)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("unknown type id {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for id in 0..64 {
            if let Ok(t) = TensorType::from_ggml_id(id) {
                assert_eq!(t.ggml_id(), id);
            }
        }
    }

    #[test]
    fn row_bytes_checks_blocks() {
        assert_eq!(TensorType::Q4_0.row_bytes(64), Some(36));
        assert_eq!(TensorType::Q4_K.row_bytes(256), Some(144));
        assert_eq!(TensorType::Q6_K.row_bytes(512), Some(420));
        assert_eq!(TensorType::Q8_0.row_bytes(33), None);
        assert_eq!(TensorType::F16.row_bytes(3), Some(6));
    }

    #[test]
    fn low_bit_types_have_ggml_geometry() {
        // ggml-common.h's static_asserts: (ggml id, elements, bytes per block).
        for (ty, id, bs, bb) in [
            (TensorType::Q2_K, 10, 256, 84),
            (TensorType::Q3_K, 11, 256, 110),
            (TensorType::IQ4_NL, 20, 32, 18),
            (TensorType::IQ4_XS, 23, 256, 136),
            (TensorType::MXFP4, 39, 32, 17),
        ] {
            assert_eq!(TensorType::from_ggml_id(id), Ok(ty));
            assert_eq!(
                (ty.ggml_id(), ty.block_size(), ty.block_bytes()),
                (id, bs, bb)
            );
            assert!(ty.is_quantized());
        }
        assert_eq!(TensorType::IQ4_XS.bits_per_weight(), 4.25);
        assert_eq!(TensorType::MXFP4.row_bytes(64), Some(34));
        assert_eq!(TensorType::Q3_K.row_bytes(100), None);
    }
}

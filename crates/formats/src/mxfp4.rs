//! MXFP4 blocks in the two layouts that carry them: transformers' `mxfp4` quantization
//! (OpenAI's gpt-oss checkpoints: `X_blocks` of 16 bytes and `X_scales` of one E8M0 byte
//! per 32 values, value `2i` in byte `i`'s low nibble, `2i + 1` in its high one) and
//! GGUF's `MXFP4` (the scale byte, then 16 bytes, byte `j` holding values `j` and
//! `j + 16`). Both use the same FP4 (E2M1) codes and the same scale, so converting between
//! them moves nibbles and loses nothing.

/// Bytes of one GGUF `MXFP4` block.
pub const GGUF_BLOCK_BYTES: usize = 17;

/// The GGUF block of a transformers block: its 16 code bytes and its scale.
pub fn gguf_block(codes: &[u8], scale: u8) -> [u8; GGUF_BLOCK_BYTES] {
    assert_eq!(codes.len(), 16);
    let code = |k: usize| (codes[k / 2] >> (4 * (k % 2))) & 0x0F;
    let mut out = [0u8; GGUF_BLOCK_BYTES];
    out[0] = scale;
    for j in 0..16 {
        out[1 + j] = code(j) | (code(j + 16) << 4);
    }
    out
}

/// The transformers block (16 code bytes) and scale of a GGUF block.
pub fn transformers_block(block: &[u8]) -> ([u8; 16], u8) {
    assert_eq!(block.len(), GGUF_BLOCK_BYTES);
    let code = |k: usize| {
        if k < 16 {
            block[1 + k] & 0x0F
        } else {
            block[1 + k - 16] >> 4
        }
    };
    let mut codes = [0u8; 16];
    for (i, c) in codes.iter_mut().enumerate() {
        *c = code(2 * i) | (code(2 * i + 1) << 4);
    }
    (codes, block[0])
}

/// GGUF `MXFP4` rows from transformers' blocks and scales of the same rows (`blocks`:
/// 16 bytes per 32 values, `scales`: one byte per 32 values).
pub fn gguf_rows(blocks: &[u8], scales: &[u8]) -> Vec<u8> {
    assert_eq!(blocks.len(), scales.len() * 16);
    blocks
        .chunks_exact(16)
        .zip(scales)
        .flat_map(|(codes, &scale)| gguf_block(codes, scale))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_convert_both_ways_without_loss() {
        let mut state = 0x9e37_79b9u32;
        for _ in 0..64 {
            let mut codes = [0u8; 16];
            for c in &mut codes {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *c = (state >> 24) as u8;
            }
            let block = gguf_block(&codes, 130);
            assert_eq!(transformers_block(&block), (codes, 130));
        }
        // Value k of a transformers block lands where GGUF keeps value k.
        let mut codes = [0u8; 16];
        codes[0] = 0x21; // values 0 and 1
        codes[8] = 0x43; // values 16 and 17
        let b = gguf_block(&codes, 0);
        assert_eq!(b[1], 0x31); // values 0 and 16
        assert_eq!(b[2], 0x42); // values 1 and 17
    }
}

//! Training data: reading, tokenizing, masking and packing (being written).

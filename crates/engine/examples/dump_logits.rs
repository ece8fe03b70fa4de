//! Print the top-5 logits at each position of a token sequence, and compare with a
//! reference dump (raw little-endian f32 [n][vocab]) when one is given.
//!
//!   cargo run --release -p verity-engine --example dump_logits -- MODEL 1,2,3 [REF.f32]
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = Arc::new(verity_model::load(std::path::Path::new(&args[1])).expect("load"));
    let tokens: Vec<u32> = args[2].split(',').map(|t| t.parse().unwrap()).collect();
    let v = model.hparams.n_vocab;
    let mut s = verity_engine::Session::new(model, 512);
    // ONE_BY_ONE=1 evaluates token by token (checks batch invariance of the whole pass).
    let logits = if std::env::var_os("ONE_BY_ONE").is_some() {
        tokens
            .iter()
            .flat_map(|&t| s.eval(&[t]).expect("eval").to_vec())
            .collect()
    } else {
        s.eval_all(&tokens).expect("eval")
    };
    let reference: Option<Vec<f32>> = args.get(3).map(|p| {
        std::fs::read(p)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    });
    for t in 0..tokens.len() {
        let row = &logits[t * v..(t + 1) * v];
        let mut idx: Vec<usize> = (0..v).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let top: Vec<String> = idx[..5]
            .iter()
            .map(|&i| format!("{i}:{:.3}", row[i]))
            .collect();
        let err = reference.as_ref().map(|r| {
            let r = &r[t * v..(t + 1) * v];
            let num: f64 = row
                .iter()
                .zip(r)
                .map(|(&a, &b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = r.iter().map(|&b| (b as f64).powi(2)).sum();
            (num / den).sqrt()
        });
        println!("{t} {} nrmse={err:?}", top.join(" "));
    }
}

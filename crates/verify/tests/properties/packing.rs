//! Property 10: packing round-trips and interop (PEFT triu order, official ½(B−Bᵀ), LyCORIS B−Bᵀ).

use oftq_ortho::{
    block_size_from_n_elements, n_elements, pack_blocks, packed_from_skew, packed_index,
    skew_blocks, skew_from_packed,
};
use oftq_verify::reference;
use proptest::prelude::*;

use crate::common::*;

#[test]
fn packing_round_trips() {
    let name = "10. packing: oftq = reference, round trips, packed_index";
    let s = (1usize..=24, 1usize..=3)
        .prop_flat_map(|(b, rows)| (Just(b), matrix(rows, n_elements(b), 5.0)));
    check(name, s, |(b, packed)| {
        for i in 0..packed.nrows() {
            let v: Vec<f64> = packed.row(i).iter().copied().collect();
            let q = skew_from_packed(&v, b).unwrap();
            let want = reference::skew_from_packed(&v, b).unwrap();
            ensure(
                name,
                "skew_from_packed = reference",
                max_diff(&to_na(q.as_ref()), &want),
                0.0,
            )?;
            ensure_that(
                name,
                "packed_from_skew ∘ skew_from_packed = id",
                packed_from_skew(q.as_ref()).unwrap() == v,
            )?;
        }
        let blocks = skew_blocks(to_faer::<f64>(&packed).as_ref(), b).unwrap();
        let back = pack_blocks(&blocks).unwrap();
        ensure(
            name,
            "pack_blocks ∘ skew_blocks = id",
            max_diff(&to_na(back.as_ref()), &packed),
            0.0,
        )?;
        for (k, (i, j)) in reference::packed_pairs(b).into_iter().enumerate() {
            ensure_that(name, "packed_index", packed_index(b, i, j) == k)?;
        }
        ensure_that(
            name,
            "block_size_from_n_elements",
            block_size_from_n_elements(n_elements(b)).unwrap() == b,
        )
    });
}

#[test]
fn non_triangular_rejected() {
    let name = "10. block_size_from_n_elements rejects non-triangular n";
    check(name, 0usize..100_000, |n| {
        let is_tri = (1..=500usize).any(|b| n_elements(b) == n);
        ensure_that(
            name,
            "Ok iff triangular",
            block_size_from_n_elements(n).is_ok() == is_tri,
        )
    });
}

#[test]
fn storage_interop() {
    let name = "10. official ½(B−Bᵀ) and LyCORIS B−Bᵀ round-trip through the packed row";
    let s = (2usize..=16).prop_flat_map(|b| (Just(b), matrix(b, b, 3.0)));
    check(name, s, |(b, bm)| {
        for q in [(&bm - bm.transpose()) * 0.5, &bm - bm.transpose()] {
            let v = packed_from_skew(to_faer::<f64>(&q).as_ref()).unwrap();
            let back = to_na(skew_from_packed(&v, b).unwrap().as_ref());
            ensure(name, "Q round trip", max_diff(&back, &q), 0.0)?;
            let want: Vec<f64> = reference::packed_pairs(b)
                .iter()
                .map(|&(i, j)| q[(i, j)])
                .collect();
            ensure_that(name, "triu row-major", v == want)?;
        }
        Ok(())
    });
}

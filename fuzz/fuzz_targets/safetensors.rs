//! `na_model::WeightMap::from_safetensors` on arbitrary bytes, then the
//! weight map's checks against a model's expected shapes: never a panic;
//! every accepted tensor's data matches its shape, and the map survives
//! `WeightMap::to_safetensors` and a second read bit for bit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use na_model::{param_shapes, Config, Naming, WeightMap};

fuzz_target!(|data: &[u8]| {
    let Ok(map) = WeightMap::from_safetensors(data) else {
        return;
    };
    let mut total = 0usize;
    for name in map.names().map(str::to_owned).collect::<Vec<_>>() {
        let t = map.get(&name).expect("a listed name is present");
        let n = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .expect("an accepted shape's product fits");
        assert_eq!(t.data.len(), n, "{name}: data matches the shape");
        // Every value came from the input: no tensor outgrows the file.
        assert!(
            n <= data.len(),
            "{name}: {n} values from {} bytes",
            data.len()
        );
        total += n;
    }
    assert_eq!(map.numel(), total);
    // Written as f32 under the names it holds, and read again.
    let bytes = map.to_safetensors().expect("an accepted map is written");
    let again = WeightMap::from_safetensors(&bytes).expect("what we write, we read");
    assert_eq!(again.numel(), map.numel());
    // HuggingFace names are mapped on reading; the authors' names are kept,
    // so a map under them reads back exactly, values bit for bit.
    if map.naming() == Some(Naming::Authors) {
        assert_eq!(again.naming(), Some(Naming::Authors));
        assert!(
            again.names().eq(map.names()),
            "names change in a round trip"
        );
        for name in map.names() {
            let (a, b) = (map.get(name).unwrap(), again.get(name).unwrap());
            assert_eq!(a.shape, b.shape, "{name}: shape");
            assert!(
                a.data
                    .iter()
                    .zip(&b.data)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: values change in a round trip"
            );
        }
    }
    // Checking against a model never panics, whatever the names and shapes.
    let cfg = Config::preset("fashion_nat").expect("preset");
    for backbone in [false, true] {
        let _ = map.check(&param_shapes(&cfg, backbone));
    }
});

//! Implements a newer `ignis:udf` world than the host speaks.

wit_bindgen::generate!({ path: "wit", world: "udf" });

struct Future;

impl Guest for Future {
    fn describe() -> Vec<String> {
        vec!["shiny".to_owned()]
    }
}

impl exports::ignis::udf::scalar::Guest for Future {
    fn call(_name: String, args: Vec<u8>) -> Vec<u8> {
        args
    }
}

export!(Future);

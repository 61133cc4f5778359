//! The `oftq` command line.
fn main() {
    println!("oftq: not yet");
}

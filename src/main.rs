//! `nvmf-tgt`: the command line.

fn main() {
    println!("nvmf-tgt: skeleton");
}

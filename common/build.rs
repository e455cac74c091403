// The migrations are embedded at compile time (refinery::embed_migrations!). Without this,
// cargo would not rebuild when a migration file is added, and binaries would silently lack it.
fn main() {
    println!("cargo:rerun-if-changed=../database/migrations");
}

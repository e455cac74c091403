use clap::Parser;
use orderflow_common::telemetry;
use orderflow_producer::{Application, Settings};

// glibc malloc showed as ~15% of the producer's profile under load (per-order strings,
// payloads and futures freed on other threads); mimalloc's thread-local free lists are cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    telemetry::init(settings.log.format);
    let application = Application::build(settings).await?;
    application.run_until_stopped().await?;
    Ok(())
}

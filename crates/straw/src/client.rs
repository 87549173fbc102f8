pub async fn run(_c: crate::config::ClientConfig) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}

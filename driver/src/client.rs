//! The CLI's side of the driver API: submit, follow, fetch, cancel, upload UDFs.

use std::time::Duration;

use anyhow::{Context, bail};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::record_batch::RecordBatch;
use ignis_core::job::JobSpec;
use ignis_driver::service::{ARROW_STREAM, ErrorEnvelope, JobStatus, WrittenOutput};
use ignis_driver::udfs::RegisteredUdf;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    pub fn new(base: &str, key: Option<String>) -> anyhow::Result<Self> {
        let key = key.context("no API key: pass --api-key or set IGNIS_API_KEY")?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(ignis_core::protocol::CLIENT_IDLE_CONNECTION)
            .build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_string(), key })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach the driver at {}", self.base))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ErrorEnvelope>(&body) {
            Ok(e) => bail!("{} ({status}, {})", e.error.message, e.error.code),
            Err(_) => bail!("the driver answered {status}"),
        }
    }

    async fn json<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let bytes = self.send(request).await?.bytes().await?;
        serde_json::from_slice(&bytes).context("unreadable answer from the driver")
    }

    pub async fn submit(&self, job: &JobSpec) -> anyhow::Result<String> {
        let body = serde_json::to_vec(job)?;
        let request = self
            .http
            .post(format!("{}/v1/jobs", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let submitted: serde_json::Value = self.json(request).await?;
        submitted["id"].as_str().map(str::to_string).context("the driver returned no job id")
    }

    pub async fn status(&self, id: &str) -> anyhow::Result<JobStatus> {
        self.json(self.http.get(format!("{}/v1/jobs/{id}", self.base))).await
    }

    pub async fn list(&self) -> anyhow::Result<Vec<JobStatus>> {
        #[derive(serde::Deserialize)]
        struct List {
            jobs: Vec<JobStatus>,
        }
        let list: List = self.json(self.http.get(format!("{}/v1/jobs", self.base))).await?;
        Ok(list.jobs)
    }

    pub async fn cancel(&self, id: &str) -> anyhow::Result<JobStatus> {
        self.json(self.http.post(format!("{}/v1/jobs/{id}/cancel", self.base))).await
    }

    pub async fn stop(&self, id: &str) -> anyhow::Result<JobStatus> {
        self.json(self.http.post(format!("{}/v1/jobs/{id}/stop", self.base))).await
    }

    /// Upload a Wasm UDF component under `name`.
    pub async fn upload_udf(&self, name: &str, bytes: Vec<u8>) -> anyhow::Result<RegisteredUdf> {
        let request = self
            .http
            .post(format!("{}/v1/udfs", self.base))
            .query(&[("name", name)])
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes);
        self.json(request).await
    }

    pub async fn list_udfs(&self) -> anyhow::Result<Vec<RegisteredUdf>> {
        #[derive(serde::Deserialize)]
        struct List {
            udfs: Vec<RegisteredUdf>,
        }
        let list: List = self.json(self.http.get(format!("{}/v1/udfs", self.base))).await?;
        Ok(list.udfs)
    }

    /// Remove the component name `name`.
    pub async fn remove_udf(&self, name: &str) -> anyhow::Result<RegisteredUdf> {
        let mut url = reqwest::Url::parse(&format!("{}/v1/udfs/", self.base))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("driver URL {} cannot take a path", self.base))?
            .pop_if_empty()
            .push(name);
        self.json(self.http.delete(url)).await
    }

    /// A collect job's rows, as Arrow.
    pub async fn rows(&self, id: &str) -> anyhow::Result<Vec<RecordBatch>> {
        let request = self.http.get(format!("{}/v1/jobs/{id}/result", self.base)).header("accept", ARROW_STREAM);
        let bytes = self.send(request).await?.bytes().await?;
        let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
        Ok(reader.collect::<Result<Vec<_>, _>>()?)
    }

    pub async fn written(&self, id: &str) -> anyhow::Result<WrittenOutput> {
        self.json(self.http.get(format!("{}/v1/jobs/{id}/result", self.base))).await
    }

    /// Poll until the job finishes, passing each status to `progress`.
    pub async fn wait(&self, id: &str, progress: impl Fn(&JobStatus)) -> anyhow::Result<JobStatus> {
        loop {
            let status = match self.status(id).await {
                Ok(s) => s,
                Err(e) if is_transient(&e) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            progress(&status);
            if status.state.is_finished() {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.downcast_ref::<reqwest::Error>().is_some_and(|e| e.is_timeout() || e.status() == Some(StatusCode::BAD_GATEWAY))
}

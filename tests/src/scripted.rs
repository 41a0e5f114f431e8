//! A worker played by the test itself over the `Workers` API: it leases
//! jobs and finishes them as a script says (an image copied into the
//! attempt's folder, a failure with a reason, a checkpoint and a release),
//! so a page or a sheet can be shown every state a job can be in without
//! rendering anything.

use std::path::{Path, PathBuf};

use stylefarm_proto as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Interceptor = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

pub struct ScriptedWorker {
    client: pb::workers_client::WorkersClient<InterceptedService<Channel, Interceptor>>,
    pub id: String,
    /// The coordinator's storage folder (`--data-dir`'s `storage/`).
    storage: PathBuf,
}

/// A job leased by a [`ScriptedWorker`].
pub struct Leased {
    pub spec: pb::JobSpec,
    pub token: u64,
}

impl Leased {
    pub fn folder(&self, storage: &Path) -> PathBuf {
        storage.join(&self.spec.prefix)
    }
}

impl ScriptedWorker {
    /// Registers as `name` with `token` (or none) at `url`.
    pub async fn register(url: &str, token: Option<&str>, storage: &Path, name: &str) -> Self {
        Self::register_with(url, token, storage, name, &[]).await.unwrap()
    }

    /// [`ScriptedWorker::register`] with `labels`; the refusal, if any.
    pub async fn register_with(url: &str, token: Option<&str>, storage: &Path, name: &str, labels: &[&str]) -> Result<Self, tonic::Status> {
        let channel = Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap();
        let interceptor: Interceptor = match token {
            Some(t) => Box::new(crate::with_token(t)),
            None => Box::new(Ok),
        };
        let mut client = pb::workers_client::WorkersClient::with_interceptor(channel, interceptor);
        let r = pb::RegisterRequest { name: name.into(), device: "cpu".into(), labels: labels.iter().map(|l| l.to_string()).collect(), ..Default::default() };
        let id = client.register(r).await?.into_inner().worker_id;
        Ok(Self { client, id, storage: storage.to_path_buf() })
    }

    pub async fn lease(&mut self) -> Leased {
        self.try_lease().await.expect("a job to lease")
    }

    /// A lease, if there is a job for this worker.
    pub async fn try_lease(&mut self) -> Option<Leased> {
        let r = self.client.lease(pb::LeaseRequest { worker_id: self.id.clone(), free_memory_bytes: 0 }).await.unwrap().into_inner();
        r.job.map(|spec| Leased { spec, token: r.fencing_token })
    }

    /// Writes `files` (name, bytes) into the attempt's folder.
    pub fn write(&self, job: &Leased, files: &[(&str, &[u8])]) {
        let folder = job.folder(&self.storage);
        std::fs::create_dir_all(&folder).unwrap();
        for (name, bytes) in files {
            std::fs::write(folder.join(name), bytes).unwrap();
        }
    }

    /// Finishes `job` with `png` as its image (and its preview, as a
    /// worker writes one).
    pub async fn complete(&mut self, job: Leased, png: &[u8]) {
        self.write(&job, &[("output.png", png), ("preview.png", png)]);
        let r = pb::CompleteRequest { worker_id: self.id.clone(), job_id: job.spec.job_id, fencing_token: job.token, output_name: "output.png".into(), progress: None };
        self.client.complete(r).await.unwrap();
    }

    /// Fails `job` as bad input, saying `why`.
    pub async fn fail(&mut self, job: Leased, why: &str) {
        let r = pb::FailRequest {
            worker_id: self.id.clone(),
            job_id: job.spec.job_id,
            fencing_token: job.token,
            kind: pb::FailureKind::BadInput as i32,
            message: why.into(),
        };
        self.client.fail(r).await.unwrap();
    }

    /// Reports a checkpoint at `iteration` and gives `job` back (as a
    /// draining worker does): its next attempt resumes from there.
    pub async fn checkpoint_and_release(&mut self, job: Leased, iteration: u32) {
        self.write(&job, &[("checkpoint.safetensors", b"not a real checkpoint")]);
        let r = pb::ReleaseRequest {
            worker_id: self.id.clone(),
            job_id: job.spec.job_id,
            fencing_token: job.token,
            checkpoint_name: "checkpoint.safetensors".into(),
            checkpoint_iteration: iteration,
        };
        self.client.release(r).await.unwrap();
    }

    /// Reports progress: `iteration` of `iterations` (a heartbeat, no
    /// preview written); the coordinator's answer.
    pub async fn progress(&mut self, job: &Leased, iteration: u32, iterations: u32) -> pb::HeartbeatResponse {
        let r = pb::HeartbeatRequest {
            worker_id: self.id.clone(),
            job_id: job.spec.job_id.clone(),
            fencing_token: job.token,
            progress: Some(pb::Progress { iteration, iterations, total: 1.0, ..Default::default() }),
            ..Default::default()
        };
        self.client.heartbeat(r).await.unwrap().into_inner()
    }

    /// Tells the coordinator the attempt resumed from `iteration`.
    pub async fn resumed(&mut self, job: &Leased, iteration: u32) {
        let r = pb::HeartbeatRequest {
            worker_id: self.id.clone(),
            job_id: job.spec.job_id.clone(),
            fencing_token: job.token,
            resumed_from: Some(iteration),
            ..Default::default()
        };
        self.client.heartbeat(r).await.unwrap();
    }
}

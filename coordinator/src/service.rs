//! The `Farm` service (users): each RPC takes who is calling from the
//! request and hands it, with the message, to its handler — free functions
//! over the one context ([`crate::context::State`]), a module per
//! resource: [`crate::collections`], [`crate::jobs`], [`crate::fleet`]
//! (the operator's actions on workers) and [`crate::submit`]; Watch has
//! its own route ([`crate::watch`]). Handlers validate, hand one command to
//! the state's owner ([`crate::state::StateHandle`]: writes are
//! group-committed on its thread, reads run on read-only connections) and
//! map each failure to a deliberate status ([`crate::status`]); they never
//! call this service back (`tests/tests/modules.rs` checks there is no
//! import circle), and the dashboard calls the same handlers. The
//! `Workers` service is [`crate::workers`].

use std::sync::Arc;

use stylefarm_proto as pb;
use stylefarm_proto::farm_server::Farm;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::context::State;
use crate::command::WorkerAction as Action;
use crate::machine::Event;
use crate::collections;
use crate::fleet;
use crate::jobs;

/// The `Farm` service (users).
#[derive(Clone)]
pub struct FarmService(pub(crate) Arc<State>);

#[tonic::async_trait]
impl Farm for FarmService {
    async fn submit(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        crate::submit::submit_collection(&self.0, request).await
    }

    async fn get_collection(&self, request: Request<pb::CollectionRef>) -> Result<Response<pb::Collection>, Status> {
        let caller = Caller::of(&request);
        collections::get(&self.0, &caller, &request.into_inner().collection_id).await.map(Response::new)
    }

    async fn list_collections(&self, request: Request<pb::ListCollectionsRequest>) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let caller = Caller::of(&request);
        collections::list(&self.0, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = Caller::of(&request);
        jobs::list(&self.0, &caller, request.into_inner()).await.map(Response::new)
    }

    type WatchStream = crate::watch::WatchStream;

    async fn watch(&self, request: Request<pb::CollectionRef>) -> Result<Response<Self::WatchStream>, Status> {
        crate::watch::watch_decoded(&self.0, request).await
    }

    async fn delete_collection(&self, request: Request<pb::DeleteCollectionRequest>) -> Result<Response<pb::DeleteCollectionResponse>, Status> {
        let caller = Caller::of(&request);
        collections::delete(&self.0, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn cancel(&self, request: Request<pb::CollectionRef>) -> Result<Response<pb::Collection>, Status> {
        let caller = Caller::of(&request);
        collections::cancel(&self.0, &caller, &request.into_inner().collection_id).await.map(Response::new)
    }

    type FetchStream = collections::Chunks;

    async fn fetch(&self, request: Request<pb::FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let caller = Caller::of(&request);
        collections::fetch(&self.0, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn get_job(&self, request: Request<pb::JobRef>) -> Result<Response<pb::JobDetail>, Status> {
        let caller = Caller::of(&request);
        jobs::get(&self.0, &caller, &request.into_inner().job_id).await.map(Response::new)
    }

    async fn list_job_files(&self, request: Request<pb::JobRef>) -> Result<Response<pb::ListJobFilesResponse>, Status> {
        let caller = Caller::of(&request);
        jobs::files(&self.0, &caller, &request.into_inner().job_id).await.map(Response::new)
    }

    async fn cancel_job(&self, request: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request);
        jobs::act(&self.0, &caller, &request.into_inner().job_id, Event::Cancel, "").await.map(Response::new)
    }

    async fn retry_job(&self, request: Request<pb::RetryJobRequest>) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        jobs::act(&self.0, &caller, &r.job_id, Event::Retry, &r.changes_json).await.map(Response::new)
    }

    async fn update_collection(&self, request: Request<pb::UpdateCollectionRequest>) -> Result<Response<pb::Collection>, Status> {
        let caller = Caller::of(&request);
        collections::update(&self.0, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn retry_failed(&self, request: Request<pb::CollectionRef>) -> Result<Response<pb::Collection>, Status> {
        let caller = Caller::of(&request);
        collections::retry_failed(&self.0, &caller, &request.into_inner().collection_id).await.map(Response::new)
    }

    async fn list_users(&self, request: Request<pb::ListUsersRequest>) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = Caller::of(&request);
        fleet::users(&self.0, &caller).await.map(Response::new)
    }

    async fn list_workers(&self, request: Request<pb::ListWorkersRequest>) -> Result<Response<pb::ListWorkersResponse>, Status> {
        fleet::list_worker_page(&self.0, request.into_inner()).await.map(Response::new)
    }

    async fn drain_worker(&self, request: Request<pb::WorkerRef>) -> Result<Response<pb::WorkerInfo>, Status> {
        fleet::act_on_worker(&self.0, request, Action::Drain).await
    }

    async fn resume_worker(&self, request: Request<pb::WorkerRef>) -> Result<Response<pb::WorkerInfo>, Status> {
        fleet::act_on_worker(&self.0, request, Action::Resume).await
    }

    async fn forget_worker(&self, request: Request<pb::WorkerRef>) -> Result<Response<pb::WorkerInfo>, Status> {
        fleet::act_on_worker(&self.0, request, Action::Forget).await
    }

    async fn resolve_id(&self, request: Request<pb::IdPrefix>) -> Result<Response<pb::IdMatch>, Status> {
        let caller = Caller::of(&request);
        jobs::resolve_id(&self.0, &caller, &request.into_inner().prefix).await.map(Response::new)
    }
}

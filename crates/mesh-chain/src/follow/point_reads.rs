//! Reads the follower makes on demand, beside following the chain: the allowlists of the cluster's app auth
//! that a peer's image must be on, its TCB policy, its grants between seats, and the seat an instance holds.

use super::*;

impl Follower {
    /// Whether the cluster's app auth allows `compose_hash` and the OS image `os_measurement`, as of the
    /// latest block: what an attested peer must also satisfy.
    ///
    /// # Errors
    /// [`ChainError`] when the reads fail.
    pub async fn allowlisted(
        &mut self,
        compose_hash: B256,
        os_measurement: B256,
    ) -> Result<(bool, bool), ChainError> {
        let auth = self.app_auth().await?;
        self.count();
        let at = self.present();
        let compose = auth
            .isComposeHashAllowed(compose_hash)
            .block(at)
            .call()
            .await
            .map_err(call("isComposeHashAllowed"))?;
        self.count();
        let os = auth
            .isOsAllowed(os_measurement)
            .block(at)
            .call()
            .await
            .map_err(call("isOsAllowed"))?;
        Ok((compose, os))
    }

    /// The cluster's TCB policy (`DstackClusterAppAuth.tcbPolicy`), read at the present block: `None` while the
    /// owner has set none.
    ///
    /// # Errors
    /// [`ChainError`] when the read fails.
    pub async fn tcb_policy(&mut self) -> Result<Option<TcbPolicyRead>, ChainError> {
        let auth = self.app_auth().await?;
        self.count();
        let p = auth
            .tcbPolicy()
            .block(self.present())
            .call()
            .await
            .map_err(call("tcbPolicy"))?;
        Ok((p.statuses != 0).then_some(TcbPolicyRead {
            statuses: p.statuses,
            min_evaluation_data_number: p.minEvaluationDataNumber,
            grace_secs: p.graceSeconds,
            drop_secs: p.dropSeconds,
            advisories: p.advisoryIds,
        }))
    }

    /// The cluster's grants between seats (`DstackClusterGrants.policy`), read at the present block.
    ///
    /// # Errors
    /// [`ChainError`] when the read fails or returns what the contract could never hold.
    pub async fn grants(&mut self) -> Result<crate::policy::ClusterPolicy, ChainError> {
        let auth = self.app_auth().await?;
        self.count();
        crate::policy::read(&auth, self.present()).await
    }

    /// The cluster's app auth, looked up once: from then on its logs are followed with the cluster's.
    async fn app_auth(
        &mut self,
    ) -> Result<DstackClusterAppAuth::DstackClusterAppAuthInstance<DynProvider>, ChainError> {
        let address = match self.app_auth {
            Some(a) => a,
            None => {
                self.count();
                let a = contract::app_auth_of(&self.provider, self.view.contract).await?;
                *self.app_auth.insert(a)
            }
        };
        Ok(DstackClusterAppAuth::new(address, self.provider.clone()))
    }

    /// The block that reads of the present are made at: the newest confirmed one, once the head was read.
    fn present(&self) -> alloy::eips::BlockId {
        self.confirmed
            .map_or(alloy::eips::BlockId::latest(), alloy::eips::BlockId::number)
    }

    /// The seat bound to `instance_id`, if any.
    ///
    /// # Errors
    /// [`ChainError`] when the read fails.
    pub async fn seat_of(&mut self, instance_id: &str) -> Result<Seat, ChainError> {
        self.count();
        let cluster = DstackClusterNFT::new(self.view.contract, self.provider.clone());
        let at = self.present();
        let token: U256 = cluster
            .tokenOfInstance(instance_id.to_owned())
            .block(at)
            .call()
            .await
            .map_err(call("tokenOfInstance"))?;
        if token.is_zero() {
            return Ok(Seat::None);
        }
        self.count();
        let info = cluster
            .seatInfo(token)
            .block(at)
            .call()
            .await
            .map_err(call("seatInfo"))?;
        let id = u64::try_from(token).map_err(|_| {
            implausible(format!("seat id {token} of this instance is out of range"))
        })?;
        Ok(if info.active {
            Seat::Active(id)
        } else {
            Seat::Inactive(id)
        })
    }
}

/// The cluster's TCB policy as its app auth returns it (`mesh_attest::tcb::TcbPolicy::from_chain` reads it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcbPolicyRead {
    /// One bit per accepted TCB status, UpToDate's bit 0 included.
    pub statuses: u8,
    pub min_evaluation_data_number: u32,
    pub grace_secs: u32,
    pub drop_secs: u32,
    pub advisories: Vec<String>,
}

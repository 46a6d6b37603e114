// Where this process sits in a multi-process launch, read from the environment the launcher set:
//   torchrun style      RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
//   Open MPI (mpirun)   OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
//   MPICH / Intel MPI   PMI_RANK, PMI_SIZE, MPI_LOCALRANKID
//   Slurm (srun)        SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID
// in that order of precedence. MASTER_ADDR / MASTER_PORT (rank 0's host and a free port) are read in every
// case; without them a single-node group meets on 127.0.0.1:29500. No MPI library is used: the ranks meet over
// TCP (runtime/socket_communicator.h), which also carries the NCCL unique id.
#pragma once

#include <functional>
#include <string>

namespace mfuser {

struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  // the GPU this process uses
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "single process";  // which variables were found ("torchrun", "Open MPI", ...)

  // A launcher set the variables (any world size, 1 included: `mfuser train` then runs the data-parallel
  // graph with a group of one, which exercises SyncBN and the gradient all-reduces on a single GPU).
  bool launched() const { return launcher != "single process"; }
};

// Reads the variables through `getenv` (std::getenv by default); malformed or inconsistent values throw an
// Error naming the variable.
LaunchEnv launch_env(const std::function<const char*(const char*)>& getenv = {});

}  // namespace mfuser

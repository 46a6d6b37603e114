#include "runtime/launch.h"

#include <cerrno>
#include <cstdlib>

#include "runtime/error.h"

namespace mfuser {

namespace {

int parse_int(const char* name, const char* text, int min_value) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text, &end, 10);
  MFUSER_CHECK(end != text && *end == '\0' && errno == 0 && v >= min_value && v <= 1 << 20, "environment: ", name,
               "='", text, "' is not an integer >= ", min_value);
  return int(v);
}

}  // namespace

LaunchEnv launch_env(const std::function<const char*(const char*)>& getenv_fn) {
  const auto get = [&](const char* name) -> const char* {
    const char* v = getenv_fn ? getenv_fn(name) : std::getenv(name);
    return v && *v ? v : nullptr;
  };
  struct Scheme {
    const char* launcher;
    const char *rank, *size, *local_rank;
  };
  constexpr Scheme schemes[] = {{"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
                                {"Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
                                {"MPICH / Intel MPI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
                                {"Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"}};
  LaunchEnv env;
  for (const Scheme& s : schemes) {
    if (!get(s.size)) continue;
    MFUSER_CHECK(get(s.rank), "environment: ", s.size, " is set but ", s.rank, " is not (", s.launcher, ")");
    env.launcher = s.launcher;
    env.world_size = parse_int(s.size, get(s.size), 1);
    env.rank = parse_int(s.rank, get(s.rank), 0);
    env.local_rank = get(s.local_rank) ? parse_int(s.local_rank, get(s.local_rank), 0) : 0;
    MFUSER_CHECK(env.rank < env.world_size, "environment: ", s.rank, "=", env.rank, " is not below ", s.size, "=",
                 env.world_size);
    break;
  }
  if (const char* addr = get("MASTER_ADDR")) env.master_addr = addr;
  if (const char* port = get("MASTER_PORT")) {
    env.master_port = parse_int("MASTER_PORT", port, 1);
    MFUSER_CHECK(env.master_port < 65536, "environment: MASTER_PORT=", port, " is not a TCP port");
  }
  return env;
}

}  // namespace mfuser

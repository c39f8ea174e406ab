/* world.h — this process's place among the ranks of a run.
 *
 * fsrun started on its own talks through the self communicator, exactly as
 * a single process always has. Started by mpirun (Open MPI's
 * OMPI_COMM_WORLD_SIZE, PMIx's PMIX_RANK or MPICH's PMI_SIZE in the
 * environment) it starts MPI and hands the parallel strategies the MPI
 * engine. main() owns the world; sessions and modes read it.
 *
 * Failures: during set-up every rank reaches the same agreement points
 * (fs_world_agree), so a configuration error that every rank finds is
 * printed once, by rank 0, and a rank that fails alone is reported by that
 * rank while the others stop quietly; no rank waits for one that quit.
 * During the work a failing rank prints its message and ends the whole job
 * (fs_world_abort), since its peers may be blocked in a collective. */
#ifndef FS_WORLD_H
#define FS_WORLD_H

#include "fastserve/comm.h"

/* The size a launcher gave this process's job: 0 when none launched it,
 * -1 when one did but did not say how many ranks. */
int fs_world_launched_size(void);

/* Picks and starts the engine. Fails (status 2 material) when a launcher
 * started several ranks but this fsrun was built without MPI. */
int fs_world_start(fs_error *err);
/* MPI_Finalize when MPI was started; harmless otherwise. */
void fs_world_stop(void);

/* Never NULL: the self communicator until (and unless) MPI starts. */
fs_comm *fs_world_comm(void);
int fs_world_rank(void);
int fs_world_size(void);
/* Ranks of this job on this machine (1 alone). */
int fs_world_local_size(void);
/* This rank among them (0 alone): one GPU per rank is the local rank's. */
int fs_world_local_rank(void);

/* Collective over every rank: each passes its own status `rc` and the exit
 * status it would end with (`code`: 2 configuration, 1 other). Returns 0
 * when every rank succeeded. Otherwise returns non-zero with *exit_code the
 * largest code of the failed ranks; a rank that did not fail gets a
 * message saying so in err. fs_world_report then prints only what should
 * be printed. */
int fs_world_agree(int rc, int code, int *exit_code, fs_error *err);
/* The exit status of the last agreement that found a failure (every rank
 * knows it), 0 when none did. */
int fs_world_failed_code(void);

/* From here on collectives run: a rank that fails ends the job with
 * fs_world_abort instead of agreeing (its peers may be blocked waiting for
 * it). Every rank marks it at the same point. */
void fs_world_begin_work(void);
int fs_world_in_work(void);

/* "fsrun: message" alone, "fsrun: rank R: message" among several ranks;
 * nothing on a rank that the last failed agreement silenced (another rank
 * reports the error, or every rank found the same one and rank 0 says it). */
void fs_world_report(const fs_error *err);
/* Ends every rank of the job with `code` (MPI_Abort); returns only when
 * this process is alone. */
void fs_world_abort(int code);

#endif

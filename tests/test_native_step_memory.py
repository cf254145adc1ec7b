"""The attribution rules of ``benchmarks/diagnostics/native_step_memory.py`` on native stacks copied from memray's
records of real steps (innermost frame first), each labelled by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "diagnostics" / "native_step_memory.py"


@pytest.fixture(scope="module")
def nsm() -> ModuleType:
    spec = importlib.util.spec_from_file_location("native_step_memory", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# torch mlp inference, batch 64: MKL's packing buffer of the first addmm (one per OpenMP thread).
MKL_MAIN = [
    "mm_internal_malloc",
    "mkl_serv_allocate",
    "mkl_blas_def_sgemm_getbufs_bdz",
    "mkl_blas_def_xsgemm_bdz",
    "mkl_blas_sgemm_omp_driver_v1._omp_fn.2",
    "GOMP_parallel",
    "mkl_blas_sgemm",
    "SGEMM",
    "at::native::cpublas::gemm(at::native::TransposeType, long)",
    "at::native::addmm_impl_cpu_(at::Tensor&, at::Tensor const&)",
    "at::_ops::addmm::call(at::Tensor const&, at::Tensor const&)",
    "at::native::linear(at::Tensor const&, at::Tensor const&)",
]
# The same buffer allocated on the OpenMP worker thread: no ATen frame on its stack.
MKL_WORKER = [
    "mm_internal_malloc",
    "mkl_serv_allocate",
    "mkl_blas_def_sgemm_getbufs_bdz",
    "mkl_blas_sgemm_omp_driver_v1._omp_fn.2",
    "gomp_thread_start",
    "start_thread",
]
# A tensor: the addmm's output, through c10's CPU allocator.
TENSOR = [
    "c10::alloc_cpu(unsigned long)",
    "c10::DefaultCPUAllocator::allocate(unsigned long)",
    "at::detail::empty_generic(c10::ArrayRef<long>, c10::Allocator*)",
    "at::meta::structured_addmm::meta(at::Tensor const&)",
    "at::_ops::addmm::call(at::Tensor const&, at::Tensor const&)",
]
# The OpenMP team the first parallel GEMM creates.
OMP = ["gomp_malloc", "gomp_new_team", "GOMP_parallel", "mkl_blas_sgemm_omp_driver_v1", "SGEMM"]
# TensorFlow: a conv-gradient op's im2col buffer from TensorFlow's allocator, and Eigen's own block in the same op.
TF_TENSOR = [
    "malloc",
    "tsl::port::AlignedMalloc(unsigned long, int)",
    "tensorflow::CPUAllocator::AllocateRaw(unsigned long, unsigned long)",
    "tensorflow::OpKernelContext::allocate_temp(tensorflow::DataType)",
    "tensorflow::Conv2DCustomBackpropFilterOp<Eigen::ThreadPoolDevice, float>::Compute(tensorflow::OpKernelContext*)",
]
EIGEN = [
    "posix_memalign",
    "Eigen::internal::aligned_malloc(unsigned long)",
    "Eigen::TensorEvaluator<Eigen::TensorContractionOp<> const, Eigen::ThreadPoolDevice>::evalProduct()",
    "tensorflow::Conv2DCustomBackpropFilterOp<Eigen::ThreadPoolDevice, float>::Compute(tensorflow::OpKernelContext*)",
]
PYTHON = ["_PyObject_Malloc", "_PyCode_CreateLineArray", "call_trace", "_PyEval_EvalFrameDefault"]


def test_owner_is_the_innermost_allocator_family(nsm: ModuleType) -> None:
    assert nsm.attribute(MKL_MAIN) == ("MKL buffers (mkl_serv_allocate)", "at::_ops::addmm::call")
    assert nsm.attribute(TENSOR) == ("torch tensors (c10 CPU allocator)", "at::_ops::addmm::call")
    assert nsm.attribute(OMP)[0] == "OpenMP runtime"
    assert nsm.attribute(PYTHON)[0] == "Python interpreter (objects, code)"


def test_site_falls_back_from_operator_to_library_routine(nsm: ModuleType) -> None:
    # No ATen frame on a worker thread's stack: the innermost MKL GEMM routine (the one fetching its buffers) names it.
    assert nsm.attribute(MKL_WORKER) == ("MKL buffers (mkl_serv_allocate)", "mkl_blas_def_sgemm")
    # Neither an operator nor a known routine: the first frame that is not allocator plumbing, without arguments.
    assert nsm.attribute(["malloc", "operator new(unsigned long)", "foo::bar(int)", "main"]) == ("other", "foo::bar")


def test_tensorflow_allocator_and_eigen_are_told_apart(nsm: ModuleType) -> None:
    assert nsm.attribute(TF_TENSOR) == (
        "TensorFlow allocator (tensors)",
        "tensorflow::Conv2DCustomBackpropFilterOp<Eigen::ThreadPoolDevice, float>::Compute",
    )
    assert nsm.attribute(EIGEN) == (
        "Eigen",
        "tensorflow::Conv2DCustomBackpropFilterOp<Eigen::ThreadPoolDevice, float>::Compute",
    )


def test_itemize_sums_per_owner_and_site(nsm: ModuleType) -> None:
    # Sizes of the mlp inference peak (memray's records): two 262,816 B MKL buffers, two 65,536 B tensors,
    # the OpenMP team 1,776 B; plus a 200 KiB mapped Eigen block.
    records = [
        (262_816, 1, MKL_MAIN),
        (262_816, 1, MKL_WORKER),
        (65_536, 1, TENSOR),
        (65_536, 1, TENSOR),
        (1_776, 1, OMP),
        (204_800, 1, EIGEN),
    ]
    out = nsm.itemize(records, top=3)
    assert out["total_bytes"] == 262_816 * 2 + 65_536 * 2 + 1_776 + 204_800
    owners = {o["owner"]: o for o in out["owners"]}
    mkl = owners["MKL buffers (mkl_serv_allocate)"]
    assert (mkl["bytes"], mkl["allocations"], mkl["small_bytes"]) == (525_632, 2, 0)  # 256.7 KiB: mapped
    tensors = owners["torch tensors (c10 CPU allocator)"]
    assert (tensors["bytes"], tensors["allocations"], tensors["small_bytes"]) == (131_072, 2, 131_072)
    assert out["owners"][0]["owner"] == "MKL buffers (mkl_serv_allocate)"
    assert len(out["sites"]) == 3
    assert out["sites"][0] == {
        "owner": "MKL buffers (mkl_serv_allocate)",
        "site": "at::_ops::addmm::call",
        "bytes": 262_816,
        "allocations": 1,
        "small_bytes": 0,
    }


# MXNet 1.9.1, AlexNet inference batch 8 (memray's records): the storage manager serves a conv's temporary
# workspace and an array's oneDNN-layout copy as well as NDArrays.
MX_TEMP = [
    "mxnet::storage::CPUDeviceStorage::Alloc",
    "mxnet::StorageImpl::Alloc",
    "mxnet::Resource::get_host_space_internal",
    "mxnet::op::MKLDNNConvolutionForwardFullFeature",
    "mxnet::MKLDNNRun",
]
MX_COPY = [
    "mxnet::storage::CPUDeviceStorage::Alloc",
    "mxnet::StorageImpl::Alloc",
    "<unknown>",
    "mxnet::NDArray::Chunk::SetMKLMem",
    "mxnet::NDArray::CreateMKLDNNData",
    "mxnet::op::MKLDNNConvolutionForwardFullFeature",
]
MX_ARRAY = [
    "mxnet::storage::CPUDeviceStorage::Alloc",
    "mxnet::StorageImpl::Alloc",
    "mxnet::NDArray::CheckAndAlloc",
    "mxnet::op::MKLDNNActivationBackward",
]


def test_mxnet_storage_is_split_by_its_caller(nsm: ModuleType) -> None:
    assert nsm.attribute(MX_TEMP) == (
        "MXNet temp space (Resource::get_space)",
        "mxnet::op::MKLDNNConvolutionForwardFullFeature",
    )
    assert nsm.attribute(MX_COPY)[0] == "MXNet oneDNN-layout copies"
    assert nsm.attribute(MX_ARRAY) == ("MXNet storage (NDArray)", "mxnet::op::MKLDNNActivationBackward")


def test_slopes_fit_each_owner(nsm: ModuleType) -> None:
    # Two owners over batches 8, 16, 32: tensors 2 + 0.5 b MB (6, 10, 18), MKL flat 1 MB; RSS 3 + 0.25 b.
    def case(batch: int, tensors: float, mkl: float, rss: float) -> dict[str, object]:
        return {
            "batch": batch,
            "rss": {"rss_bytes": rss * 1e6},
            "traced": {
                "memray_peak_bytes": (tensors + mkl) * 1e6,
                "owners": [{"owner": "tensors", "bytes": tensors * 1e6}, {"owner": "mkl", "bytes": mkl * 1e6}],
            },
            "predicted": {"simulated_step_mb": 0.5 * batch},
        }

    rows = {r["series"]: r for r in nsm.slopes([case(8, 6, 1, 5), case(16, 10, 1, 7), case(32, 18, 1, 11)])}
    assert rows["tensors"]["per_sample_mb"] == pytest.approx(0.5)
    assert rows["tensors"]["fixed_mb"] == pytest.approx(2.0)
    assert rows["mkl"]["per_sample_mb"] == pytest.approx(0.0)
    assert rows["mkl"]["fixed_mb"] == pytest.approx(1.0)
    assert rows["RSS above baseline (untraced)"]["per_sample_mb"] == pytest.approx(0.25)
    assert rows["memray's peak (all owners)"]["per_sample_mb"] == pytest.approx(0.5)
    assert rows["simulated step (no overhead term)"]["fixed_mb"] == pytest.approx(0.0)


def test_live_at_end_replays_frees_reallocs_and_unmaps(nsm: ModuleType) -> None:
    # Hand-written event sequence: a freed block, a realloc (memray: FREE of the old block + REALLOC of the new),
    # a mapping unmapped at its tail, one split in the middle, one unmapped whole.
    events = [
        ("MALLOC", 0x1000, 100, "a"),
        ("MALLOC", 0x2000, 50, "b"),
        ("FREE", 0x1000, 0, None),
        ("MALLOC", 0x3000, 10, "c"),
        ("FREE", 0x3000, 0, None),
        ("REALLOC", 0x4000, 20, "c"),
        ("MMAP", 0x10000, 0x4000, "m"),
        ("MUNMAP", 0x13000, 0x1000, None),  # the last page of m
        ("MMAP", 0x20000, 0x3000, "s"),
        ("MUNMAP", 0x21000, 0x1000, None),  # the middle page of s
        ("MMAP", 0x30000, 0x1000, "w"),
        ("MUNMAP", 0x30000, 0x1000, None),
    ]
    assert nsm.live_at_end(events) == {
        0x2000: (50, "b"),
        0x4000: (20, "c"),
        0x10000: (0x3000, "m"),
        0x20000: (0x1000, "s"),
        0x22000: (0x1000, "s"),
    }


def test_resident_bytes_counts_touched_pages(nsm: ModuleType) -> None:
    import mmap

    page = mmap.PAGESIZE
    region = mmap.mmap(-1, 8 * page)
    try:
        import ctypes

        address = ctypes.addressof(ctypes.c_char.from_buffer(region))
        region[0] = 1  # first page
        region[5 * page] = 1  # sixth page
        assert nsm.resident_bytes(address, 8 * page) == 2 * page
    finally:
        del address
        region.close()


def test_live_at_snapshot_counts_intervals_spanning_it(nsm: ModuleType) -> None:
    # (allocated before snapshot a, freed before snapshot d or never, allocations, bytes)
    spans = [(2, 5, 1, 100), (5, None, 2, 30), (0, 2, 1, 7), (4, 5, 3, 11)]
    assert nsm.live_at_snapshot(spans, 4) == (100 + 11, 1 + 3)
    assert nsm.live_at_snapshot(spans, 5) == (30, 2)  # the first and last span were freed before snapshot 5
    assert nsm.live_at_snapshot(spans, 1) == (7, 1)
    assert nsm.live_at_snapshot([], 3) == (0, 0)

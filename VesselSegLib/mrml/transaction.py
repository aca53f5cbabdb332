"""All or nothing in the MRML scene: what a run adds is removed again if the run does not finish.

A segmentation run adds many nodes (segmentation, probability volumes, models and their folder, the vessel
graph's model and table, the metrics table) and may fill an existing segmentation node. Any error, a cancel
or a KeyboardInterrupt while doing so must leave the scene as it was: :class:`SceneTransaction` records the
nodes before, and on failure removes the new ones (newest first), the subject-hierarchy folders it was told
about, and puts back the content of an existing output segmentation.
"""

from __future__ import annotations

from collections.abc import Callable

import slicer


def _node_ids(scene) -> list[str]:
    return [scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())]


def _snapshot_segmentation(segmentation_node) -> Callable[[], None]:
    """A function putting back the segments, reference geometry and transform the node has now."""
    saved = slicer.vtkSegmentation()
    saved.DeepCopy(segmentation_node.GetSegmentation())
    role = segmentation_node.GetReferenceImageGeometryReferenceRole()
    reference_id = segmentation_node.GetNodeReferenceID(role)
    transform_id = segmentation_node.GetTransformNodeID()

    def restore() -> None:
        segmentation_node.GetSegmentation().DeepCopy(saved)
        segmentation_node.SetNodeReferenceID(role, reference_id)
        segmentation_node.SetAndObserveTransformNodeID(transform_id)
        segmentation_node.Modified()

    return restore


class SceneTransaction:
    """Context manager: on any exception (``BaseException``) inside it, the scene is put back as it was.

    Example
    -------
    >>> with SceneTransaction(scene, existing_segmentation=node) as transaction:  # doctest: +SKIP
    ...     folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "models")
    ...     transaction.created_folder(folder)
    ...     ...  # add nodes; raise to undo

    Parameters
    ----------
    scene : vtkMRMLScene
    existing_segmentation : vtkMRMLSegmentationNode, optional
        An existing node the run writes into; its segments, reference geometry and transform are restored.
    """

    def __init__(self, scene, *, existing_segmentation=None) -> None:
        self.scene = scene
        self._existing_segmentation = existing_segmentation
        self._folders: list[int] = []
        self._ids_before: set[str] = set()
        self._restore: Callable[[], None] | None = None

    def __enter__(self) -> SceneTransaction:
        self._ids_before = set(_node_ids(self.scene))
        if self._existing_segmentation is not None:
            self._restore = _snapshot_segmentation(self._existing_segmentation)
        return self

    def created_folder(self, item_id: int) -> None:
        """Remember a subject-hierarchy folder made inside the transaction (removed on failure)."""
        self._folders.append(item_id)

    def new_nodes(self) -> list:
        """Nodes added since the transaction began, oldest first."""
        return [self.scene.GetNodeByID(i) for i in _node_ids(self.scene) if i not in self._ids_before]

    def rollback(self) -> None:
        """Remove what was added and restore the existing segmentation."""
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        for item_id in reversed(self._folders):
            if hierarchy is not None and hierarchy.GetItemName(item_id):
                hierarchy.RemoveItem(item_id, False, True)
        for node in reversed(self.new_nodes()):
            if node is not None and self.scene.IsNodePresent(node):
                self.scene.RemoveNode(node)
        if self._restore is not None:
            self._restore()

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is not None:
            self.rollback()
        return False  # never swallow the exception


__all__ = ["SceneTransaction"]
